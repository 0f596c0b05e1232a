"""schemathesis against ``/openapi.json`` of a real node: no 5xx, every answer as documented.

The suite runs a short pass (a fixed seed, a few dozen cases per operation); ``nox -s fuzz``
runs a long one (``SPEGEL_SCHEMATHESIS_EXAMPLES``, at least 1000 cases, random seed).
``positive_data_acceptance`` is left out: the spec's patterns cannot say everything the
mirror checks (a registry port above 65535, a label longer than 63 bytes), and the
mirror rightly answers those with a 400 it documents.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.nodes import NodeProcess

StartNode = Callable[..., NodeProcess]
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance,negative_data_rejection,"
          "unsupported_method,allow_header_conformance,missing_required_header")

pytestmark = pytest.mark.fuzz


def schemathesis_binary() -> str | None:
    beside = Path(sys.executable).with_name("schemathesis")
    return str(beside) if beside.exists() else shutil.which("schemathesis")


def test_openapi_schema_holds_under_generated_requests(spegel_node: StartNode,
                                                       tmp_path: Path) -> None:
    # Not a skip: schemathesis is in the test extra that CI installs.
    assert schemathesis_binary() is not None, "schemathesis is required (pip install '.[test]')"
    examples = int(os.environ.get("SPEGEL_SCHEMATHESIS_EXAMPLES", "8"))
    minimum = int(os.environ.get("SPEGEL_SCHEMATHESIS_MIN_CASES", "100"))
    seed = [] if os.environ.get("SPEGEL_SCHEMATHESIS_RANDOM") else ["--seed", "20261127"]
    image = build_image(tmp_path / "layout", "docker.io/library/demo:v1", layer_sizes=(1000,))
    node = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                       str(image.layout_dir), "--router", "kademlia")
    binary = schemathesis_binary()
    assert binary is not None
    result = subprocess.run(
        [binary, "run", f"{node.url}/openapi.json", "--checks", CHECKS,
         "--max-examples", str(examples), "--workers", "1", "--phases",
         "examples,coverage,fuzzing", "--suppress-health-check", "all", "--warnings", "off",
         "--request-timeout", "10", *seed],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"})
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    generated = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert generated is not None, summary
    assert int(generated[1]) == int(generated[2]) >= minimum, summary
    print(f"schemathesis: {generated[0]}")
    assert node.process is not None and node.process.poll() is None
    assert "Traceback" not in node.log_path.read_text()
