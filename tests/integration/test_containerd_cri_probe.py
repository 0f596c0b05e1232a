"""The CRI probe against a real containerd: without the CRI plugin it says nothing."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from spegel_containerd.checks import startup_checks
from spegel_containerd.cri_config import log_mirror_warnings, probe_cri_config
from spegel_core.testing.containerd import ContainerdDaemon


def test_no_cri_plugin_gives_no_warning_and_no_error(
        containerd_daemon: ContainerdDaemon, caplog: pytest.LogCaptureFixture) -> None:
    # The test daemon runs with the CRI plugin disabled (as `ctr`-only hosts do).
    assert probe_cri_config(containerd_daemon.socket, timeout=5) is None
    assert log_mirror_warnings(containerd_daemon.socket, "1.6.20", timeout=5) == []
    with caplog.at_level(logging.WARNING):
        startup_checks(containerd_daemon.socket, "k8s.io", containerd_daemon.content_path)
    assert not [r for r in caplog.records if "config_path" in r.getMessage()
                or "transfer service" in r.getMessage()]


CRI_CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    discard_unpacked_layers = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/cni-conf"
"""


def test_a_real_cri_plugin_that_bypasses_the_mirror_is_named(tmp_path: Path) -> None:
    """containerd 1.6 with its CRI plugin on, no config_path and discarded layers."""
    if shutil.which("containerd") is None:
        pytest.fail("containerd is required (apt-get install containerd)")
    (tmp_path / "config.toml").write_text(CRI_CONFIG.format(d=tmp_path))
    with (tmp_path / "containerd.log").open("wb") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(tmp_path / "config.toml")],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        socket = tmp_path / "containerd.sock"
        deadline = time.monotonic() + 20
        config = None
        while config is None:
            assert daemon.poll() is None, (tmp_path / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the CRI plugin never answered Status"
            config = probe_cri_config(socket, timeout=2) if socket.exists() else None
            time.sleep(0.05)
        warnings = log_mirror_warnings(socket, "1.6.20")
        assert len(warnings) == 2
        assert "config_path is not set" in warnings[0]
        assert "discard_unpacked_layers = true" in warnings[1]
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
