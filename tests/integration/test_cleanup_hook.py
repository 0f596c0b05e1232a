"""The Go original's uninstall hook runs here: ``cleanup --addr`` then ``cleanup-wait``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from spegel_core.testing.nodes import free_loopback_ip

SPEGEL = [sys.executable, "-m", "spegel_core.cli.main"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SPEGEL_")}


def _status(url: str, method: str = "GET") -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method),
                                    timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


def test_the_go_charts_post_delete_hook(tmp_path: Path) -> None:
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    previous = 'server = "https://registry-1.docker.io"\n'
    (certs / "docker.io" / "hosts.toml").write_text(previous)
    run = subprocess.run([*SPEGEL, "configuration", f"--containerd-registry-config-path={certs}",
                          "--mirror-targets", "http://127.0.0.1:5000"], env=_env(),
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in certs.iterdir()) == ["_backup", "_default"]

    ip = free_loopback_ip(8080)
    cleanup = subprocess.Popen([*SPEGEL, "cleanup", f"--containerd-registry-config-path={certs}",
                                f"--addr={ip}:8080"], env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while _status(f"http://{ip}:8080/healthz") != 200:
            assert cleanup.poll() is None, cleanup.stdout.read() if cleanup.stdout else ""
            assert time.monotonic() < deadline, "cleanup never answered /healthz"
            time.sleep(0.05)
        # The configuration is back before the probe says so.
        assert (certs / "docker.io" / "hosts.toml").read_text() == previous
        assert _status(f"http://{ip}:8080/other") == 404
        assert _status(f"http://{ip}:8080/healthz", "POST") == 404
        wait = subprocess.run([*SPEGEL, "cleanup-wait", f"--probe-endpoint={ip}:8080",
                               "--threshold=2", "--period=50ms"], env=_env(),
                              capture_output=True, text=True, timeout=60, check=False)
        assert wait.returncode == 0, wait.stderr
    finally:
        cleanup.send_signal(signal.SIGTERM)
        assert cleanup.wait(timeout=15) == 0


def test_cleanup_wait_rejects_bad_values() -> None:
    for args, flag in ((["--probe-endpoint=:8080"], "--probe-endpoint"),
                       (["--probe-endpoint=x:1", "--threshold=0"], "--threshold"),
                       (["--probe-endpoint=x:1", "--period=soon"], "--period"),
                       ([], "--probe-endpoint")):
        run = subprocess.run([*SPEGEL, "cleanup-wait", *args], env=_env(), capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 2 and flag in run.stderr, (args, run.stderr)
