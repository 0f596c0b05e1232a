"""A small run of ``nox -s load`` in the normal suite: many clients, no errors.

No timing assertions: the figures of the full run go to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.bench.load import main, run_load, serve_image, source_address


def test_small_load_run_has_no_errors(tmp_path: Path) -> None:
    node, image = serve_image(tmp_path, layers=2, layer_mib=1)
    try:
        result = asyncio.run(run_load(node.ip, node.port, image, clients=60, addresses=6,
                                      seconds=2.0, max_requests=30))
    finally:
        node.stop()
    print(result)
    assert result.errors == 0, result.error_kinds
    assert result.requests >= 60 and result.mib_per_s > 0
    assert result.p50_ms > 0 and result.p99_ms >= result.p50_ms
    assert "Exceeded concurrency limit" not in node.log()


def test_clients_spread_over_their_addresses() -> None:
    sources = {source_address(i, 50) for i in range(1000)}
    assert len(sources) == 50 and all(s.startswith("127.") for s in sources)


@pytest.mark.parametrize("argv", [["--clients", "0"], ["--seconds", "0"],
                                  ["--addresses", "501"], ["--clients", "x"]])
def test_bad_arguments_are_usage_errors(argv: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
