"""Real containerd daemons for tests: :mod:`spegel_core.localcluster.containerd` plus helpers.

The daemon itself is public core API; the test kit adds a daemon in a temporary
directory and the import of OCI layouts.

Benchmark hook: :func:`import_layout` fills a daemon from an OCI layout
built by :func:`spegel_core.oci.image_builder.build_image`, and
:func:`registry_args` gives the ``spegel registry`` flags of a node serving
from that daemon, so a benchmark can serve the same image from a containerd
content directory and from an OCI layout and compare the two.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from spegel_core.localcluster.containerd import (
    CONTAINERD_BINARY,
    CTR_BINARY,
    ContainerdDaemon,
    containerd_available,
    registry_args,
)

__all__ = [
    "CONTAINERD_BINARY",
    "CTR_BINARY",
    "ContainerdDaemon",
    "containerd_available",
    "import_layout",
    "layout_archive",
    "registry_args",
    "temporary_daemon",
]


@contextmanager
def temporary_daemon(namespace: str = "k8s.io") -> Iterator[ContainerdDaemon]:
    """A started daemon in a fresh directory under the system temp dir, removed afterwards.

    The directory is short on purpose: a unix socket path must fit in 108 bytes,
    which pytest's ``tmp_path`` does not always do.
    """
    directory = Path(tempfile.mkdtemp(prefix="spegel-ctd-"))
    daemon = ContainerdDaemon(directory, namespace)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def layout_archive(layout_dir: Path, archive: Path) -> Path:
    """Tar an OCI image layout directory into ``archive`` (what ``ctr images import`` reads)."""
    with tarfile.open(archive, "w") as tar:
        for path in sorted(Path(layout_dir).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout_dir)), recursive=False)
    return archive


def import_layout(daemon: ContainerdDaemon, layout_dir: Path, *, all_platforms: bool = True,
                  unpack: bool = True, namespaces: Sequence[str] = ()) -> None:
    """Import every image of an OCI layout into ``daemon`` (in each of ``namespaces``).

    Also the hook the benchmarks use to fill a node's containerd.
    """
    archive = Path(layout_dir).with_name(Path(layout_dir).name + ".tar")
    layout_archive(layout_dir, archive)
    try:
        for namespace in namespaces or (daemon.namespace,):
            daemon.import_archive(archive, all_platforms=all_platforms, unpack=unpack,
                                  namespace=namespace)
    finally:
        archive.unlink(missing_ok=True)
