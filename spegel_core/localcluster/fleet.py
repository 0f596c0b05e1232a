"""A small fleet on loopback: nodes with their own containerd behind one throttled upstream.

Each node is a real ``spegel registry`` process (:class:`NodeProcess`) on its own
127.x address, serving from its own containerd daemon, with a ``hosts.toml`` that
sends that containerd to its node's mirror first and to the upstream (through the
:class:`ThrottledProxy`) on a miss. Used by ``spegel demo --fleet``, the end-to-end
tests of arriving content and single flight, and ``nox -s bench -- arriving``::

    with Fleet(workdir, nodes=2, layer_sizes=(16 * 2**20,), rate=16e6) as fleet:
        a, b = fleet.nodes
        pull_a = a.start_pull(fleet.reference)
        ...
        assert fleet.proxy.bytes_down < 1.25 * fleet.image_bytes
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from spegel_core.localcluster.containerd import ContainerdDaemon, registry_args
from spegel_core.localcluster.loopback import free_loopback_ip, free_port
from spegel_core.localcluster.throttle import ThrottledProxy
from spegel_core.localcluster.upstream import UpstreamRegistry
from spegel_core.node_process import NodeProcess
from spegel_core.oci.image_builder import BuiltImage, build_image

__all__ = ["Fleet", "FleetNode"]


@dataclass
class FleetNode:
    """One node: its containerd, its spegel process and its containerd hosts directory."""

    name: str
    daemon: ContainerdDaemon
    node: NodeProcess
    hosts: Path

    def start_pull(self, reference: str) -> subprocess.Popen[str]:
        """``ctr images pull`` (content only, linux/amd64) through this node's mirror."""
        command = ["ctr", "--address", str(self.daemon.socket), "-n", self.daemon.namespace,
                   "images", "pull", "--platform", "linux/amd64", "--hosts-dir",
                   str(self.hosts), "--plain-http", reference]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def ingest_size(self, digest: str) -> int | None:
        """Bytes of ``digest`` in containerd's ingest directory (None: no such ingest)."""
        entry = self.ingest_dir(digest)
        if entry is None:
            return None
        try:
            return (entry / "data").stat().st_size
        except OSError:  # committed or aborted in between
            return None

    def ingest_dir(self, digest: str) -> Path | None:
        """The ingest directory of ``digest`` in this node's containerd, or None."""
        root = self.daemon.content_path / "ingest"
        with contextlib.suppress(OSError):
            for entry in root.iterdir():
                with contextlib.suppress(OSError):
                    if (entry / "ref").read_text().strip().endswith(digest):
                        return entry
        return None

    def metric(self, name: str, labels: str = "") -> float:
        """Sum of the samples of metric ``name`` (with ``labels`` text, e.g. 'source="peer"')."""
        with urllib.request.urlopen(f"{self.node.metrics_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        pattern = re.compile(rf"^{re.escape(name)}(?:{{(?P<labels>[^}}]*)}})? (?P<value>\S+)$")
        for line in text.splitlines():
            match = pattern.match(line)
            if match and labels in (match["labels"] or ""):
                total += float(match["value"])
        return total

    def check(self, reference: str) -> str:
        """``ctr images check`` of ``reference`` (contains "complete" when every blob is held)."""
        return self.daemon.ctr("images", "check", f"name=={reference}")


class Fleet:
    """``nodes`` nodes with containerd behind an upstream throttled to ``rate`` bytes/s.

    :param workdir: where the registry, image layout, logs and hosts files go.
    :param nodes: how many nodes.
    :param layer_sizes: sizes of the image's layers (one platform, linux/amd64).
    :param rate: the upstream link's rate in bytes per second (shared by every node).
    :param node_args: extra ``spegel registry`` flags of every node.
    :param seed: selects the image's content.
    :param resolve_timeout: ``--mirror-resolve-timeout`` of the nodes (each miss waits that
        long; 20 ms in production, more on a loaded test machine).
    """

    def __init__(self, workdir: Path, *, nodes: int = 2, layer_sizes: Sequence[int] = (2**20,),
                 rate: float = 16e6, node_args: Sequence[str] = (), seed: int = 7,
                 resolve_timeout: str = "100ms") -> None:
        self.workdir = Path(workdir)
        self.count = nodes
        self.layer_sizes = tuple(layer_sizes)
        self.rate = rate
        self.node_args = list(node_args)
        self.seed = seed
        self.resolve_timeout = resolve_timeout
        self.nodes: list[FleetNode] = []
        self._daemon_dirs: list[Path] = []
        self.registry: UpstreamRegistry | None = None
        self.proxy: ThrottledProxy | None = None
        self.image: BuiltImage | None = None
        self.reference = ""

    @property
    def upstream(self) -> ThrottledProxy:
        """The throttled proxy in front of the upstream registry."""
        assert self.proxy is not None, "fleet not started"
        return self.proxy

    @property
    def layers(self) -> list[str]:
        """The digests of the image's layers."""
        assert self.image is not None, "fleet not started"
        return list(self.image.layer_digests)

    def start(self) -> Fleet:
        """Start the registry, the proxy, the containerds and the nodes; returns ``self``."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.registry = UpstreamRegistry(self.workdir / "upstream", port=free_port()).start()
        self.proxy = ThrottledProxy(self.registry.host, self.registry.port, self.rate).start()
        self.reference = f"{self.proxy.address}/library/demo:v1"
        self.image = build_image(self.workdir / "layout", self.reference,
                                 layer_sizes=self.layer_sizes, seed=self.seed,
                                 platforms=(("linux", "amd64"),))
        self.registry.push_layout(self.image.layout_dir, self.reference, "library/demo:v1")
        ips = [free_loopback_ip() for _ in range(self.count)]
        peers = ",".join(f"/ip4/{ip}/udp/5001" for ip in ips)
        for index, ip in enumerate(ips):
            name = chr(ord("a") + index) if index < 26 else f"n{index}"
            directory = Path(tempfile.mkdtemp(prefix="spegel-ctd-"))  # short socket paths
            self._daemon_dirs.append(directory)
            daemon = ContainerdDaemon(directory).start()
            node = NodeProcess(ip, 5000, [
                *registry_args(daemon), "--router", "kademlia", "--bootstrap-kind", "static",
                "--static-peers", peers, "--mirror-resolve-timeout", self.resolve_timeout,
                *self.node_args], self.workdir / f"node-{name}.log")
            self.nodes.append(FleetNode(name, daemon, node, self.workdir / f"certs-{name}"))
            node.start()
        for member in self.nodes:
            member.node.wait_ready()
            # the command a node's init container runs (a process, as in a cluster)
            done = subprocess.run(
                [sys.executable, "-m", "spegel_core.cli.main", "configuration",
                 "--containerd-registry-config-path", str(member.hosts),
                 "--mirror-targets", member.node.url,
                 "--mirrored-registries", f"http://{self.proxy.address}"],
                capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"spegel configuration failed: {done.stderr.strip()}")
        return self

    def add_image(self, repository: str, layer_sizes: Sequence[int], seed: int) -> str:
        """Build and push another image (``library/<repository>:v1``); its reference."""
        assert self.registry is not None and self.proxy is not None, "fleet not started"
        reference = f"{self.proxy.address}/library/{repository}:v1"
        image = build_image(self.workdir / f"layout-{repository}", reference,
                            layer_sizes=layer_sizes, seed=seed,
                            platforms=(("linux", "amd64"),))
        self.registry.push_layout(image.layout_dir, reference, f"library/{repository}:v1")
        return reference

    def stop(self) -> None:
        """Stop every node and containerd, then the proxy and the registry; idempotent."""
        for member in self.nodes:
            member.node.stop()
            member.daemon.stop()
        for directory in self._daemon_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        if self.proxy is not None:
            self.proxy.stop()
        if self.registry is not None:
            self.registry.stop()

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
