"""A small run of ``nox -s bench`` in the normal suite: it works and reports every figure.

No timing assertions here: performance goals live in the full benchmark's ratios.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.bench.run import ROWS, run, table, write_doc


def test_small_benchmark_run(tmp_path: Path) -> None:
    args = argparse.Namespace(blob_mib=4, small_mib=1, rounds=1, clients=2, per_client=1,
                              samples=20, registry_port=0, workdir=str(tmp_path / "w"),
                              json=None, write=None, peer=True)
    results = run(args)
    for name in ("spegel", "registry"):
        figures = results[name]
        assert isinstance(figures, dict)
        assert figures["single_big_gbps"] > 0 and figures["concurrent_gbps"] > 0
        assert figures["ttfb_p50_ms"] > 0 and figures["idle_rss_mb"] > 0
    stores = results["stores"]
    assert isinstance(stores, dict) and stores["containerd_gbps"] > 0
    peer = results["peer"]
    assert isinstance(peer, dict)
    for key in ("peer", "client"):  # the hop with either side verifying blobs
        assert peer[f"{key}_big_gbps"] > 0 and peer[f"{key}_concurrent_gbps"] > 0
        assert peer[f"{key}_concurrent_cpu_s_per_gb"] >= 0  # clock ticks: 0 on tiny runs
    assert peer["sha256_big_gbps"] > 0 and peer["sha256_small_gbps"] > 0  # the ceiling
    assert peer["sha256_cpu_s_per_gb"] > 0
    rendered = table(results)
    assert rendered.count("\n") == len(ROWS) + 1
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    write_doc(doc, results, "nox -s bench -- --blob-mib 4")
    write_doc(doc, results, "nox -s bench -- --blob-mib 4")  # replaces, never duplicates
    text = doc.read_text()
    assert text.count("bench:local:begin") == 1 and "intro" in text


def test_small_soak_run(tmp_path: Path) -> None:
    from tests.bench.soak import soak

    result = soak(minutes=0.05, workdir=tmp_path, max_requests=400)
    # A count, not a rate: a loaded 2-core machine may fit only a few dozen requests
    # into the run's seconds, and throughput belongs to nox -s soak, not to the suite.
    assert isinstance(result["requests"], int) and result["requests"] >= 10
    # A lookup slower than the 20 ms resolve timeout on a loaded machine is a fast 404,
    # as designed; the requests through peers must nonetheless nearly all succeed.
    assert isinstance(result["unexpected_status"], int)
    assert result["unexpected_status"] < result["requests"] // 10
    growth = result["growth_after_warmup_mb"]
    assert isinstance(growth, dict) and set(growth) == {"a", "b", "c"}


def test_small_tee_micro_run(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.bench.tee_micro import main

    assert main(["--mib", "4", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    assert "splice_tee (hashed by the tap)" in table and table.count("\n") == 5
