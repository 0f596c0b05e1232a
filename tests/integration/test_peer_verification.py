"""What the mirror accepts from peers: hostile HTTP peers in-process, the mirror's app over ASGI.

Every way a peer can lie about a blob (its bytes, its length, its digest header, the
range it sends, the range it resumes with) ends in an error or a fallback to another
provider, never in wrong bytes delivered as a success; ``--peer-cidrs`` keeps providers
outside the trusted networks from being asked at all; and whatever a client puts in a
request, the only hosts the mirror connects to are providers the router gave it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spegel_core import hookimpl
from spegel_core.config import SpegelConfig
from spegel_core.errors import PeerError
from spegel_core.mirror.app import create_app
from spegel_core.mirror.peers import PeerFetcher
from spegel_core.oci.image_builder import BuiltImage, build_image
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import Peer
from spegel_core.testing.fakes import MemoryContentStore, MemoryNetwork, MemoryRouter
from spegel_core.testing.faults import HostilePeer, Respond, honest_responder, http_response

REF = "docker.io/library/demo:v1"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return build_image(tmp_path_factory.mktemp("layout"), REF, layer_sizes=(3 * 2**20, 5000))


class Mirror:
    def __init__(self, app: FastAPI, client: httpx.AsyncClient, network: MemoryNetwork) -> None:
        self.app, self.client, self.network = app, client, network

    @property
    def peers(self) -> PeerFetcher:
        fetcher = self.app.state.node.peers
        assert isinstance(fetcher, PeerFetcher)
        return fetcher


@pytest.fixture
async def start_mirror(
    spegel_pm: PluginManager, register_plugin: Callable[[object, str], None],
    make_config: Callable[..., SpegelConfig],
) -> AsyncIterator[Callable[..., Any]]:
    network = MemoryNetwork()
    peers: list[HostilePeer] = []

    class Wiring:
        @hookimpl
        def spegel_make_router(self, config: SpegelConfig, discovery: Any, metrics: Any) -> Any:
            return MemoryRouter(network, Peer("127.0.0.1", 1))

    register_plugin(Wiring(), "wiring")
    stack: list[Any] = []

    async def start(**settings: Any) -> Mirror:
        config = make_config(content_store="memory", router="memory",
                             mirror_resolve_timeout="200ms", **settings)
        app = create_app(config, spegel_pm, store=MemoryContentStore())
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        stack.append(lifespan)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                   base_url="http://mirror")
        stack.append(client)
        return Mirror(app, client, network)

    start.hostile = peers  # type: ignore[attr-defined]
    yield start
    for item in reversed(stack):
        if isinstance(item, httpx.AsyncClient):
            await item.aclose()
        else:
            await item.__aexit__(None, None, None)
    for peer in peers:
        await peer.aclose()


async def hostile(start_mirror: Any, respond: Respond) -> tuple[HostilePeer, Peer]:
    peer = HostilePeer(respond)
    start_mirror.hostile.append(peer)
    return peer, await peer.start()


async def test_a_wrong_digest_header_is_a_penalty(start_mirror: Any, image: BuiltImage) -> None:
    mirror = await start_mirror()
    layer, other = image.layer_digests[0], image.layer_digests[1]
    good = honest_responder(image)

    def lying(target: str, headers: dict[str, str], digest: str) -> bytes:
        return good(target, headers, other)  # another blob, and says so

    _, liar_peer = await hostile(start_mirror, lying)
    mirror.network.add_provider(layer, liar_peer)
    response = await mirror.client.get(f"/v2/library/demo/blobs/{layer}")
    assert response.status_code == 404
    # Wrong content counts against (peer, digest), not against everything the peer has.
    assert mirror.peers.content_penalties.keys() == {f"127.0.0.1:{liar_peer.port} {layer}"}
    assert mirror.peers.penalties == {}
    assert mirror.peers.penalty_counts["digest"] == 1


async def test_a_range_of_the_whole_blob_is_verified(start_mirror: Any,
                                                     image: BuiltImage) -> None:
    mirror = await start_mirror()
    layer = image.layer_digests[0]
    good = honest_responder(image)

    def corrupt(target: str, headers: dict[str, str], digest: str) -> bytes:
        answer = good(target, headers, digest)
        head, _, body = answer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n" + bytes(b ^ 0x55 for b in body[:64]) + body[64:]

    _, bad = await hostile(start_mirror, corrupt)
    mirror.network.add_provider(layer, bad)
    with pytest.raises(PeerError, match="does not match its digest"):
        await mirror.client.get(f"/v2/library/demo/blobs/{layer}",
                                headers={"Range": "bytes=0-"})
    assert mirror.peers.penalty_counts["digest"] == 1


async def test_the_range_a_peer_sends_must_be_the_one_asked(start_mirror: Any,
                                                            image: BuiltImage) -> None:
    mirror = await start_mirror()
    layer = image.layer_digests[0]
    good = honest_responder(image)

    def shifted(target: str, headers: dict[str, str], digest: str) -> bytes:
        return good(target, {**headers, "range": "bytes=0-99"}, digest)

    _, bad = await hostile(start_mirror, shifted)
    _, fine = await hostile(start_mirror, good)
    mirror.network.add_provider(layer, bad)
    mirror.network.add_provider(layer, fine)
    data = image.blob_path(layer).read_bytes()
    response = await mirror.client.get(f"/v2/library/demo/blobs/{layer}",
                                       headers={"Range": "bytes=1000-1099"})
    assert response.status_code == 206 and response.content == data[1000:1100]
    assert response.headers["content-range"] == f"bytes 1000-1099/{len(data)}"
    assert f"127.0.0.1:{bad.port} {layer}" in mirror.peers.content_penalties
    # Several ranges: the peer is asked for the whole blob, as a mirror may answer.
    many = await mirror.client.get(f"/v2/library/demo/blobs/{layer}",
                                   headers={"Range": "bytes=0-9,20-29"})
    assert many.status_code == 200 and many.content == data


async def test_a_resume_must_continue_where_the_stream_broke(start_mirror: Any,
                                                             image: BuiltImage) -> None:
    mirror = await start_mirror()
    layer = image.layer_digests[0]
    data = image.blob_path(layer).read_bytes()
    good = honest_responder(image)

    def truncated(target: str, headers: dict[str, str], digest: str) -> bytes:
        return good(target, headers, digest)[: 200 + len(data) // 2]

    def wrong_resume(target: str, headers: dict[str, str], digest: str) -> bytes:
        return good(target, {**headers, "range": "bytes=0-"}, digest) \
            if "range" in headers else good(target, headers, digest)

    _, cut = await hostile(start_mirror, truncated)
    _, wrong = await hostile(start_mirror, wrong_resume)
    resumer, right = await hostile(start_mirror, good)
    for peer in (cut, wrong, right):
        mirror.network.add_provider(layer, peer)
    response = await mirror.client.get(f"/v2/library/demo/blobs/{layer}")
    assert response.status_code == 200 and response.content == data
    # A broken stream counts against the peer; a wrong resume against (peer, digest).
    assert set(mirror.peers.penalties) == {f"127.0.0.1:{cut.port}"}
    assert set(mirror.peers.content_penalties) == {f"127.0.0.1:{wrong.port} {layer}"}
    [(_, headers)] = resumer.requests
    assert headers["range"].startswith("bytes=") and not headers["range"].startswith("bytes=0-")


@pytest.mark.parametrize("answer", [
    http_response("200 OK", {"Content-Length": "x1"}, b""),
    http_response("200 OK", {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n"),
    http_response("206 Partial Content", {"Content-Length": "10", "Content-Range": "bytes 0-9/5"},
         b"0123456789"),
    b"garbage\r\n\r\n",
])
async def test_malformed_answers_are_a_fast_404(start_mirror: Any, image: BuiltImage,
                                                answer: bytes) -> None:
    mirror = await start_mirror()
    layer = image.layer_digests[1]
    peer, address = await hostile(start_mirror, lambda *_: answer)
    mirror.network.add_provider(layer, address)
    response = await mirror.client.get(f"/v2/library/demo/blobs/{layer}")
    assert response.status_code == 404
    assert len(peer.requests) == 1  # no redirect followed, nothing else asked


async def test_redirects_are_never_followed(start_mirror: Any, image: BuiltImage) -> None:
    mirror = await start_mirror(mirror_peer_penalty="0s")
    target, target_address = await hostile(start_mirror, honest_responder(image))
    layer = image.layer_digests[1]
    location = f"http://127.0.0.1:{target_address.port}/v2/library/demo/blobs/{layer}"
    redirecting, address = await hostile(start_mirror, lambda *_: http_response(
        "307 Temporary Redirect", {"Location": location, "Content-Length": "0"}, b""))
    mirror.network.add_provider(layer, address)
    mirror.network.add_provider(image.manifest_digests[0], address)
    assert (await mirror.client.get(f"/v2/library/demo/blobs/{layer}")).status_code == 404
    manifest = await mirror.client.get(f"/v2/library/demo/manifests/{image.manifest_digests[0]}")
    assert manifest.status_code == 404
    assert len(redirecting.requests) == 2 and target.requests == []


async def test_providers_outside_the_peer_cidrs_are_never_asked(start_mirror: Any,
                                                                image: BuiltImage) -> None:
    mirror = await start_mirror(peer_cidrs="10.0.0.0/8")
    layer = image.layer_digests[1]
    peer, address = await hostile(start_mirror, honest_responder(image))
    mirror.network.add_provider(layer, address)
    assert (await mirror.client.get(f"/v2/library/demo/blobs/{layer}")).status_code == 404
    assert peer.requests == [] and mirror.peers.untrusted_providers == 1
    trusting = await start_mirror(peer_cidrs="127.0.0.1/32")
    response = await trusting.client.get(f"/v2/library/demo/blobs/{layer}")
    assert response.status_code == 200
    assert response.content == image.blob_path(layer).read_bytes()


names = st.text(st.sampled_from("abz09._-/:@?#%\\ \x00é"), min_size=1, max_size=40)
references = st.one_of(names, st.just("v1"), st.just("sha256:" + "a" * 64))
namespaces = st.one_of(st.none(), st.sampled_from(["evil.example", "http://127.0.0.9:9",
                                                    "127.0.0.1:1", "user@host", "a/b", "[::1]:80"]),
                       names)


async def test_no_request_makes_the_mirror_connect_anywhere_but_a_provider(
    start_mirror: Any, image: BuiltImage
) -> None:
    mirror = await start_mirror(mirror_peer_penalty="0s")
    provider, address = await hostile(
        start_mirror, lambda *_: http_response("404 Not Found", {"Content-Length": "0"}, b""))
    connected: list[str] = []

    async def on_start(session: Any, context: Any, params: aiohttp.TraceRequestStartParams
                       ) -> None:
        connected.append(f"{params.url.host}:{params.url.port}")

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    fetcher = mirror.peers
    fetcher.settings.trace_configs = (trace,)  # before the first peer request

    # Every key the mirror could look up has this one provider.
    mirror.network.providers = lambda key: [address]
    requests: list[tuple[str, str, str | None, str]] = []

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(names, references, namespaces, st.sampled_from(["manifests", "blobs"]))
    def generate(name: str, reference: str, ns: str | None, kind: str) -> None:
        requests.append((name, reference, ns, kind))

    generate()  # hypothesis draws the requests; they are sent below, in this event loop
    for name, reference, ns, kind in requests:
        params = {} if ns is None else {"ns": ns}
        path = f"/v2/{quote(name, safe='/')}/{kind}/{quote(reference, safe='')}"
        response = await mirror.client.get(path, params=params)
        assert response.status_code < 500
    assert connected, "no request reached the peer path"
    assert set(connected) == {f"127.0.0.1:{address.port}"}
    assert all(target.startswith("/v2/") for target, _ in provider.requests)
    await fetcher.aclose()


async def test_client_mode_checks_everything_but_the_hash(start_mirror: Any,
                                                          image: BuiltImage) -> None:
    """``--peer-blob-verify client`` (here without the zero-copy server: bytes through
    Python, unhashed): a peer's bytes of the right length pass as it sent them, while
    lengths, digest headers and resumes are checked as in the default mode."""
    mirror = await start_mirror(peer_blob_verify="client")
    layer, other = image.layer_digests[0], image.layer_digests[1]
    data = image.blob_path(layer).read_bytes()
    good = honest_responder(image)

    def corrupt(target: str, headers: dict[str, str], digest: str) -> bytes:
        head, _, body = good(target, headers, digest).partition(b"\r\n\r\n")
        return head + b"\r\n\r\n" + bytes(b ^ 0x55 for b in body[:64]) + body[64:]

    _, bad = await hostile(start_mirror, corrupt)
    mirror.network.add_provider(layer, bad)
    response = await mirror.client.get(f"/v2/library/demo/blobs/{layer}")
    assert response.status_code == 200 and len(response.content) == len(data)
    assert response.content != data  # the client's digest check is the one that counts
    assert mirror.peers.penalties == mirror.peers.content_penalties == {}

    mirror.network.remove_provider(layer, bad)
    mirror = await start_mirror(peer_blob_verify="client")  # nothing cached
    _, cut = await hostile(start_mirror, lambda t, h, d: good(t, h, d)[: 200 + len(data) // 2])
    _, liar = await hostile(start_mirror, lambda t, h, d: good(t, h, other))
    _, right = await hostile(start_mirror, good)
    for peer in (cut, liar, right):
        mirror.network.add_provider(layer, peer)
    response = await mirror.client.get(f"/v2/library/demo/blobs/{layer}")
    assert response.status_code == 200 and response.content == data
    assert set(mirror.peers.penalties) == {f"127.0.0.1:{cut.port}"}
    assert set(mirror.peers.content_penalties) == {f"127.0.0.1:{liar.port} {layer}"}
