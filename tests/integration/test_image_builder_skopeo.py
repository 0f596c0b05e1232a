"""skopeo, a real OCI client, accepts the layouts the image builder writes."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from spegel_core.oci.image_builder import build_image
from spegel_core.oci.mediatypes import OCI_INDEX

SKOPEO = "/usr/bin/skopeo"


def test_skopeo_inspects_the_index(tmp_path: Path) -> None:
    image = build_image(tmp_path / "layout", "docker.io/library/demo:v1",
                        layer_sizes=(1000, 2000))
    build_image(tmp_path / "layout", "docker.io/library/other:v2", seed=1,
                layer_sizes=(1000,))
    result = subprocess.run(
        [SKOPEO, "inspect", "--raw", f"oci:{tmp_path / 'layout'}:docker.io/library/demo:v1"],
        capture_output=True, check=True, timeout=60,
    )
    assert "sha256:" + hashlib.sha256(result.stdout).hexdigest() == image.index_digest
    assert json.loads(result.stdout)["mediaType"] == OCI_INDEX
