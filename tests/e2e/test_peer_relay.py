"""The spliced peer hop (``--peer-blob-verify client``) with real nodes, many times over.

The relay takes a connection from aiohttp's pool after the head of the peer's answer;
whatever aiohttp had already read (up to the whole body of a blob of a few MiB) is
sent first and the rest spliced. A connection must never go back to the pool in a
state the next request would hang on: here every request of many rounds, on kept-alive
connections, gets the right bytes, and nothing is penalised.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from spegel_core.oci.image_builder import build_image
from spegel_core.testing.faults import raw_get
from spegel_core.testing.nodes import NodeProcess
from tests.bench.client import RawClient

pytestmark = pytest.mark.e2e
StartNode = Callable[..., NodeProcess]
SIZES = (1000, 50_000, 3 * 2**20, 8 * 2**20 + 3000, 9 * 2**20, 24 * 2**20)


@pytest.mark.parametrize("verify", ["client", "mirror"])
def test_many_rounds_through_the_hop_all_succeed(spegel_node: StartNode, tmp_path: Path,
                                                 verify: str) -> None:
    image = build_image(tmp_path / "layout", "docker.io/library/relay:v1", layer_sizes=SIZES,
                        raw_layers=True, platforms=(("linux", "amd64"),), seed=21)
    (tmp_path / "empty").mkdir()
    source = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                         str(image.layout_dir))
    hop = spegel_node("--content-store", "oci-layout", "--oci-layout-path",
                      str(tmp_path / "empty"), "--bootstrap-kind", "static",
                      "--static-peers", f"/ip4/{source.ip}/udp/5001",
                      "--peer-blob-verify", verify)
    layers = image.layer_digests
    deadline = time.monotonic() + 15
    while raw_get(hop.ip, hop.port, f"/v2/library/relay/blobs/{layers[0]}").status != 200:
        assert time.monotonic() < deadline, "the hop never found the source"
        time.sleep(0.1)
    blobs = {digest: image.blob_path(digest).read_bytes() for digest in layers}
    requests = [(f"/v2/library/relay/manifests/{m}", None) for m in image.manifest_digests]
    requests += [("/v2/library/relay/manifests/v1", None)]
    requests += [(f"/v2/library/relay/blobs/{d}", None) for d in layers]
    requests += [(f"/v2/library/relay/blobs/{layers[-1]}", "bytes=1000-2000000")]
    for _ in range(25):
        client = RawClient(hop.ip, hop.port)  # kept alive for the whole round
        for path, byte_range in requests:
            timing = client.get(path, {"Range": byte_range} if byte_range else None)
            expected = 206 if byte_range else 200
            assert timing.status == expected, (path, timing)
            assert timing.total_s < 2.5, (path, timing)  # no wait on a stuck connection
        client.close()
    for digest, data in blobs.items():  # the bytes themselves, after all those rounds
        result = raw_get(hop.ip, hop.port, f"/v2/library/relay/blobs/{digest}")
        assert result.complete and hashlib.sha256(result.body).hexdigest() == digest[7:]
        assert len(result.body) == len(data)
    ranged = raw_get(hop.ip, hop.port, f"/v2/library/relay/blobs/{layers[-1]}",
                     {"Range": "bytes=1000-2000000"})
    assert ranged.status == 206 and ranged.body == blobs[layers[-1]][1000:2000001]
    assert "penalising" not in hop.log() and "Traceback" not in hop.log()
