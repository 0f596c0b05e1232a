"""Real containerd daemons: one per simulated node, with its own root, state and sockets.

Nothing here touches the system's containerd: every path (root, state, the
gRPC and ttrpc sockets, the ``opt`` plugin directory) lives under the
daemon's own directory, and the CRI plugin is disabled. ``ctr`` is driven
with ``--address`` pointing at the daemon's socket. :func:`registry_args` gives
the ``spegel registry`` flags of a node serving from a daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from spegel_core.node_process import terminate

__all__ = [
    "CONTAINERD_BINARY",
    "CTR_BINARY",
    "ContainerdDaemon",
    "containerd_available",
    "registry_args",
]

CONTAINERD_BINARY = "containerd"
CTR_BINARY = "ctr"

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


def containerd_available() -> bool:
    """Whether ``containerd`` and ``ctr`` are installed and can run here (as root)."""
    return (shutil.which(CONTAINERD_BINARY) is not None and shutil.which(CTR_BINARY) is not None
            and os.geteuid() == 0)


@dataclass
class ContainerdDaemon:
    """One ``containerd`` process under ``directory``.

    Example::

        daemon = ContainerdDaemon(tmp_path / "containerd").start()
        daemon.ctr("images", "ls")
        daemon.stop()
    """

    directory: Path
    namespace: str = "k8s.io"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        """The gRPC socket."""
        return self.directory / "containerd.sock"

    @property
    def root(self) -> Path:
        """The daemon's ``root`` directory (its persistent state, content included)."""
        return self.directory / "root"

    @property
    def content_path(self) -> Path:
        """The content plugin's directory: blobs are ``blobs/sha256/<hex>`` below it."""
        return self.root / "io.containerd.content.v1.content"

    @property
    def config_path(self) -> Path:
        """The daemon's ``config.toml``."""
        return self.directory / "config.toml"

    @property
    def log_path(self) -> Path:
        """Where the daemon's output goes."""
        return self.directory / "containerd.log"

    @property
    def running(self) -> bool:
        """Whether the daemon process is running."""
        return self.process is not None and self.process.poll() is None

    def write_config(self) -> Path:
        """Write ``config.toml`` (idempotent) and return its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(_CONFIG.format(
            root=self.root, state=self.directory / "state", sock=self.socket,
            opt=self.directory / "opt"))
        return self.config_path

    def start(self, timeout: float = 15.0) -> ContainerdDaemon:
        """Start the daemon and wait until ``ctr version`` answers on its socket."""
        if self.running:
            return self
        binary = shutil.which(CONTAINERD_BINARY)
        if binary is None:
            raise RuntimeError("containerd is not installed (apt-get install containerd)")
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([binary, "--config", str(self.config_path)],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.process.returncode}:\n"
                                   f"{self.log()}")
            if self.socket.exists():
                result = subprocess.run(self._ctr_command("version"), capture_output=True,
                                        timeout=10)
                if result.returncode == 0:
                    return self
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"containerd not answering on {self.socket}:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the daemon (SIGKILL after ``timeout``) and wait for it; idempotent."""
        if self.process is None:
            return
        terminate(self.process, timeout)
        self.process = None

    def restart(self) -> ContainerdDaemon:
        """Stop and start again on the same directory (content stays)."""
        self.stop()
        return self.start()

    def log(self) -> str:
        """The last 4000 characters of the daemon's output ("" before it ever ran)."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def _ctr_command(self, *args: str, namespace: str | None = None) -> list[str]:
        binary = shutil.which(CTR_BINARY) or CTR_BINARY
        return [binary, "--address", str(self.socket), "--namespace",
                namespace or self.namespace, *args]

    def ctr(self, *args: str, namespace: str | None = None, timeout: float = 120.0,
            env: dict[str, str] | None = None) -> str:
        """Run ``ctr`` against this daemon; returns stdout, raises on failure."""
        result = subprocess.run(self._ctr_command(*args, namespace=namespace),
                                capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)} failed ({result.returncode}): "
                               f"{result.stderr.strip()}")
        return result.stdout

    def import_archive(self, archive: Path, *, all_platforms: bool = True, unpack: bool = True,
                       namespace: str | None = None) -> str:
        """``ctr images import`` an OCI archive (``--all-platforms`` unless told otherwise).

        ``unpack=False`` skips making snapshots (needed for ``raw_layers`` images,
        whose layers are not tar files).
        """
        args = ["images", "import", *(["--all-platforms"] if all_platforms else []),
                *([] if unpack else ["--no-unpack"]), str(archive)]
        return self.ctr(*args, namespace=namespace)

    def remove_images(self, *references: str, namespace: str | None = None,
                      sync: bool = False) -> str:
        """``ctr images rm``: the content is left to containerd's garbage collector.

        :param references: the images to remove.
        :param namespace: containerd namespace (default: the daemon's).
        :param sync: run the collector and wait for it (``--sync``). Without it the
            collector runs when containerd's scheduler decides (its mutation and
            deletion thresholds, or an interval derived from how long its collections
            take), which once took longer than 30 s on a loaded machine.
        :returns: what ``ctr`` printed.
        """
        return self.ctr("images", "rm", *(["--sync"] if sync else []), *references,
                        namespace=namespace)

    def image_names(self, namespace: str | None = None) -> list[str]:
        """``ctr images ls -q``."""
        return self.ctr("images", "ls", "-q", namespace=namespace).split()

    def __enter__(self) -> ContainerdDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def registry_args(daemon: ContainerdDaemon) -> list[str]:
    """``spegel registry`` flags for a node whose content store is ``daemon``."""
    return ["--content-store", "containerd", "--containerd-sock", str(daemon.socket),
            "--containerd-namespace", daemon.namespace,
            "--containerd-content-path", str(daemon.content_path)]
