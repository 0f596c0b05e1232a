"""Regenerate the committed protobuf modules in :mod:`spegel_containerd._pb`.

The ``.proto`` files in ``_pb/`` are spegel's own subset of containerd's API v1.
Their Python modules (``*_pb2.py`` and ``*_pb2.pyi``) are committed, so a plain
``pip install`` needs no code generator; a unit test regenerates them with the
pinned ``grpcio-tools`` and compares the bytes, so they cannot drift from the
``.proto`` files. After editing a ``.proto`` file run::

    python -m spegel_containerd.protogen

Only message modules are generated: the gRPC calls are made by
:mod:`spegel_containerd.client` with typed method paths, checked against the
services declared in the ``.proto`` files by the same test.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["PB_DIR", "generate", "generated_files", "proto_files"]

#: Where the .proto files and the generated modules live.
PB_DIR = Path(__file__).resolve().parent / "_pb"
#: The directory protoc is rooted at, so generated imports read ``spegel_containerd._pb``.
_ROOT = PB_DIR.parent.parent
_PREFIX = Path("spegel_containerd") / "_pb"


def proto_files() -> list[Path]:
    """The ``.proto`` sources, sorted."""
    return sorted(PB_DIR.glob("*.proto"))


def generated_files(directory: Path = PB_DIR) -> list[Path]:
    """The generated modules in ``directory``, sorted."""
    return sorted([*directory.glob("*_pb2.py"), *directory.glob("*_pb2.pyi")])


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) on every ``.proto`` file; write modules into ``out_dir``.

    :returns: the files written, sorted.
    :raises RuntimeError: protoc failed (its messages are in the error).
    """
    from grpc_tools import protoc  # the test extra; not needed at run time

    includes = Path(protoc.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch)
        sources = [str(_PREFIX / path.name) for path in proto_files()]
        arguments = ["protoc", f"-I{_ROOT}", f"-I{includes}", f"--python_out={target}",
                     f"--pyi_out={target}", *sources]
        cwd = os.getcwd()
        try:
            os.chdir(_ROOT)
            status = protoc.main(arguments)
        finally:
            os.chdir(cwd)
        if status != 0:
            raise RuntimeError(f"protoc exited with {status} for {', '.join(sources)}")
        written = []
        for path in generated_files(target / _PREFIX):
            destination = out_dir / path.name
            shutil.copyfile(path, destination)
            written.append(destination)
    return sorted(written)


def main() -> int:
    """Regenerate the modules in place."""
    for path in generate(PB_DIR):
        print(path.relative_to(_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
