"""``spegel demo --fleet`` says in one line what to install when tools are missing."""

from __future__ import annotations

import argparse
import io

import pytest

from spegel_core.cli import demo_fleet


def test_without_containerd_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_fleet.shutil, "which", lambda name: None)
    out = io.StringIO()
    args = argparse.Namespace(nodes=3, layer_mib=8.0, upstream_mbps=16.0)
    assert demo_fleet.run_fleet_demo(args, out=out) == 1
    text = out.getvalue()
    assert text.count("\n") == 1 and "apt-get install" in text and "containerd" in text
