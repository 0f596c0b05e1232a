"""Automation: ``nox`` runs tests, lint and typecheck; the rest on demand (``nox -s NAME``)."""

from __future__ import annotations

import re
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (real containerd, registry, skopeo and DNS where a test needs them)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def e2e(session: nox.Session) -> None:
    """Only the tests that run several node processes."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/e2e", *session.posargs)


#: Tests that exercise the zero-copy server (sendfile) and the splice hop: what breaks
#: first when uvicorn's internals move (spegel_core/server/zerocopy.py subclasses them).
ZEROCOPY_TESTS = (
    "tests/unit/test_splice.py",
    "tests/unit/test_side_listener.py",
    "tests/integration/test_http_limits.py",
    "tests/integration/test_node_process.py",
    "tests/e2e/test_peer_relay.py",
)


def _uvicorn_range() -> tuple[str, str]:
    """The ``uvicorn>=LOW,<HIGH`` bounds of pyproject.toml's dependencies."""
    text = (Path(__file__).parent / "pyproject.toml").read_text()
    match = re.search(r'"uvicorn>=([0-9.]+),<([0-9.]+)"', text)
    if match is None:
        raise RuntimeError("pyproject.toml has no uvicorn>=LOW,<HIGH pin")
    return match.group(1), match.group(2)


@nox.session(python=PYTHON)
@nox.parametrize("end", ["oldest", "newest"])
def uvicorn(session: nox.Session, end: str) -> None:
    """The zero-copy and splice tests against the oldest and the newest uvicorn allowed.

    The range is read from pyproject.toml (``uvicorn>=LOW,<HIGH``): ``oldest`` installs
    ``LOW`` exactly, ``newest`` the newest release below ``HIGH``. Run both before widening
    the pin (docs/install.md, "Upgrading uvicorn"): ``nox -s uvicorn``.
    """
    low, high = _uvicorn_range()
    session.install("-e", ".[test]")
    wanted = f"uvicorn=={low}" if end == "oldest" else f"uvicorn>={low},<{high}"
    session.install("--upgrade", wanted)
    session.run("python", "-c", "import uvicorn; print('uvicorn', uvicorn.__version__)")
    session.run("pytest", "-q", "-p", "no:cacheprovider", *ZEROCOPY_TESTS, *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff on everything."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the core and the built-in plugins."""
    session.install("-e", ".[typecheck,test]")
    session.run("mypy")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Side-by-side benchmark against the Debian docker-registry; writes docs/benchmarks.md.

    Pass options after ``--``, e.g. ``nox -s bench -- --blob-mib 512 --rounds 3``;
    ``--only-peer`` runs the peer hop alone (both verify modes, the registry direct and
    one core's sha256 over the same bytes, interleaved). ``nox -s bench -- tee [--mib N
    --rounds N]`` measures the verified hop's machinery alone, in one process
    (tests/bench/tee_micro.py).
    ``nox -s bench -- arriving [--layer-mib 64 --rate-mbps 16 --offset 1]`` runs the
    arriving-content benchmark instead (two containerd nodes behind a throttled
    upstream, ``--advertise-arriving`` on and off; tests/bench/arriving.py).
    """
    session.install("-e", ".[test]")
    if session.posargs[:1] == ["arriving"]:
        session.run("python", "-m", "tests.bench.arriving", *session.posargs[1:])
        return
    if session.posargs[:1] == ["tee"]:
        session.run("python", "-m", "tests.bench.tee_micro", *session.posargs[1:])
        return
    args = session.posargs or ["--write", "docs/benchmarks.md"]
    session.run("python", "-m", "tests.bench.run", *args)


@nox.session(python=PYTHON)
def fleet(session: nox.Session) -> None:
    """Every node pulls one new image at once, ``--single-flight`` on and off (issue 16).

    ``nox -s fleet -- --nodes 6 --layer-mib 32 --upstream-mbps 16 [--plot docs/fleet.png]``
    (real containerd per node; the upstream is throttled, in MB/s).
    """
    session.install("-e", ".[test]")
    if "--plot" in session.posargs:
        session.install("matplotlib")
    session.run("python", "-m", "tests.bench.fleet", *session.posargs)


@nox.session(python=PYTHON)
def load(session: nox.Session) -> None:
    """1000 concurrent clients (manifests and 1 MiB blobs) from 50 loopback addresses
    against one node; prints req/s, p50/p99 and errors (``-- --clients N --seconds S``)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.bench.load", *session.posargs)


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Memory over a bounded 10-minute run of mixed requests (``-- --minutes N``)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.bench.soak", *session.posargs)


@nox.session(python=PYTHON)
def scale(session: nox.Session) -> None:
    """Scale simulation: N real Kademlia + DNS nodes on loopback UDP (see docs/scale.md).

    Pass options after ``--``: ``nox -s scale -- --nodes N [--json PATH] [--churn F]
    [--join-rate R] [--keys-per-node K]`` (``-- --help`` lists the rest). It prints a
    table and writes the figures as JSON. ``nox -s scale -- plot OUT.png RUN.json...``
    draws the figure of docs/scale.md from such JSON files (installs matplotlib here
    only: it is no dependency of spegel). ``nox -s scale -- joincost [--dns]`` measures
    the CPU one join costs, in one process (tests/scale/joincost.py).
    """
    session.install("-e", ".[test]")
    if session.posargs[:1] == ["plot"]:
        session.install("matplotlib")
        session.run("python", "-m", "tests.scale.plot", *session.posargs[1:])
    elif session.posargs[:1] == ["joincost"]:
        session.run("python", "-m", "tests.scale.joincost", *session.posargs[1:])
    else:
        session.run("python", "-m", "tests.scale.run", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The fuzzers, long: every ``-m fuzz`` test with thousands of hypothesis examples each,
    the datagram loops 50 times longer, and schemathesis with at least 1000 generated
    requests (random seed) against a real node's /openapi.json. The suite runs them short.
    """
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "fuzz", "-p", "no:cacheprovider", *session.posargs, env={
        "HYPOTHESIS_PROFILE": "fuzz",
        "SPEGEL_FUZZ_SCALE": "50",
        "SPEGEL_SCHEMATHESIS_EXAMPLES": "300",
        "SPEGEL_SCHEMATHESIS_MIN_CASES": "1000",
        "SPEGEL_SCHEMATHESIS_RANDOM": "1",
    })
