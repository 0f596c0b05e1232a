"""The containerd plugin without a daemon: event decoding, manifest walking, checks, settings."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, empty_pb2

from spegel_containerd import checks
from spegel_containerd._pb import content_events_pb2, events_pb2, images_pb2, version_pb2
from spegel_containerd.checks import ContainerdTooOld, check_socket, check_version, parse_version
from spegel_containerd.client import METHODS
from spegel_containerd.events import decode_envelope, subscribe_filters
from spegel_containerd.manifests import Child, children
from spegel_containerd.plugin import ContainerdSettings
from spegel_containerd.store import ContainerdStore, tag_reference
from spegel_containerd.walker import ImageWalker
from spegel_core.config import load_config
from spegel_core.errors import ConfigError, StoreUnavailable
from spegel_core.oci.mediatypes import OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from spegel_core.plugin_manager import PluginManager
from spegel_core.protocols import StoreEventKind

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def envelope(topic: str, message: object, *, namespace: str = "k8s.io",
             prefix: str = "") -> events_pb2.Envelope:
    payload = any_pb2.Any(type_url=prefix + message.DESCRIPTOR.full_name,  # type: ignore[attr-defined]
                          value=message.SerializeToString())  # type: ignore[attr-defined]
    return events_pb2.Envelope(namespace=namespace, topic=topic, event=payload)


@pytest.mark.parametrize(("topic", "message", "kind", "subject"), [
    ("/images/create", images_pb2.ImageCreate(name="docker.io/library/a:v1"),
     StoreEventKind.IMAGE_CREATED, "docker.io/library/a:v1"),
    ("/images/update", images_pb2.ImageUpdate(name="docker.io/library/a:v1"),
     StoreEventKind.IMAGE_CREATED, "docker.io/library/a:v1"),
    ("/images/delete", images_pb2.ImageDelete(name="docker.io/library/a:v1"),
     StoreEventKind.IMAGE_DELETED, "docker.io/library/a:v1"),
    ("/content/create", content_events_pb2.ContentCreate(digest=D1, size=3),
     StoreEventKind.CONTENT_CREATED, D1),
    ("/content/delete", content_events_pb2.ContentDelete(digest=D1),
     StoreEventKind.CONTENT_DELETED, D1),
])
@pytest.mark.parametrize("prefix", ["", "type.googleapis.com/"])
def test_decode_by_type_url(topic: str, message: object, kind: StoreEventKind, subject: str,
                            prefix: str) -> None:
    event = decode_envelope(envelope(topic, message, prefix=prefix), "k8s.io")
    assert event is not None and event.kind is kind and event.subject == subject


def test_decode_skips_what_is_not_ours(caplog: pytest.LogCaptureFixture) -> None:
    create = images_pb2.ImageCreate(name="docker.io/library/a:v1")
    assert decode_envelope(envelope("/images/create", create, namespace="moby"), "k8s.io") is None
    assert decode_envelope(envelope("/tasks/start", create), "k8s.io") is None
    assert decode_envelope(envelope("/images/delete", create), "k8s.io") is None  # wrong type
    assert decode_envelope(envelope("/images/create", images_pb2.ImageCreate()), "k8s.io") is None
    broken = events_pb2.Envelope(namespace="k8s.io", topic="/images/create", event=any_pb2.Any(
        type_url="containerd.services.images.v1.ImageCreate", value=b"\x0a\xff"))
    caplog.set_level(logging.WARNING)
    assert decode_envelope(broken, "k8s.io") is None
    assert "undecodable" in caplog.text


def test_subscribe_filters_are_scoped_to_the_namespace() -> None:
    assert subscribe_filters("k8s.io") == ['namespace=="k8s.io",topic~="^/images/"',
                                           'namespace=="k8s.io",topic~="^/content/"']


@pytest.mark.parametrize(("name", "expected"), [
    ("docker.io/library/demo:v1", "docker.io/library/demo:v1"),
    ("127.0.0.1:5000/team/app:v3", "127.0.0.1:5000/team/app:v3"),
    ("ghcr.io/org/x@" + D1, None),
    ("docker.io/library/demo:v1@" + D1, None),
    ("sha256:" + "1" * 64, None),
    ("demo:v1", None),  # not normalised: resolve would not find it by this name
    ("docker.io/library/demo", None),
    ("not a name", None),
])
def test_tag_reference(name: str, expected: str | None) -> None:
    reference = tag_reference(name)
    assert (str(reference) if reference else None) == expected


def test_children_of_index_and_manifest() -> None:
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": D1, "size": 1}, {"digest": "bad"}]}).encode()
    assert children(index, OCI_INDEX) == (OCI_INDEX, [Child(D1, OCI_MANIFEST)])
    manifest = json.dumps({"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "digest": D1},
                           "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": D2}]}).encode()
    assert children(manifest, None) == (OCI_MANIFEST, [Child(D1, OCI_CONFIG),
                                                       Child(D2, OCI_LAYER_GZIP)])
    assert children(b"\x1f\x8b binary", None) == (None, [])
    assert children(b'{"architecture": "amd64"}', OCI_CONFIG) == (None, [])


@pytest.mark.parametrize(("text", "parsed"), [
    ("1.6.20~ds1", (1, 6)), ("v1.7.0-rc.1", (1, 7)), ("2.0.0", (2, 0)), ("dev", None),
])
def test_parse_version(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_version(text) == parsed


def test_check_version() -> None:
    check_version("1.6.0", Path("/s"))
    check_version("2.1.3", Path("/s"))
    check_version("unknown-build", Path("/s"))
    with pytest.raises(ContainerdTooOld, match=r"containerd 1\.5\.9 at /s is too old"):
        check_version("1.5.9", Path("/s"))


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = Path("/tmp") / f"spegel-test-{os.getpid()}.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    yield path
    server.close()
    path.unlink(missing_ok=True)


def test_check_socket(tmp_path: Path, unix_socket: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_socket(tmp_path / "absent") is False
    assert check_socket(unix_socket) is True
    with pytest.raises(ConfigError, match="is not a socket") as info:
        check_socket(tmp_path)
    assert info.value.flag == "--containerd-sock"
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match="permission denied on"):
        check_socket(unix_socket)


def test_socket_that_does_not_answer_is_logged_not_fatal(
    unix_socket: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    checks.startup_checks(unix_socket, "k8s.io", None, timeout=0.5)
    assert "does not answer" in caplog.text


@pytest.fixture
def old_containerd() -> Iterator[Path]:
    """A gRPC server on a unix socket that answers as containerd 1.5.18 with 3 images."""
    path = Path("/tmp") / f"spegel-test-old-{os.getpid()}.sock"
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    answers: dict[str, tuple[Any, Any]] = {
        "version": (empty_pb2.Empty, version_pb2.VersionResponse(version="1.5.18")),
        "images_list": (images_pb2.ListImagesRequest, images_pb2.ListImagesResponse(
            images=[images_pb2.Image(name=f"x/{n}") for n in range(3)])),
    }
    for key, (request, answer) in answers.items():
        service, method = METHODS[key].strip("/").split("/")
        handler = grpc.unary_unary_rpc_method_handler(
            lambda _request, _context, answer=answer: answer,
            request_deserializer=request.FromString,
            response_serializer=type(answer).SerializeToString)
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {method: handler})])
    server.add_insecure_port(f"unix://{path}")
    server.start()
    yield path
    server.stop(None)
    path.unlink(missing_ok=True)


def test_old_containerd_is_a_config_error(old_containerd: Path) -> None:
    with pytest.raises(ConfigError, match=r"too old: spegel needs containerd >= 1\.6"):
        checks.startup_checks(old_containerd, "k8s.io", None)


def test_settings(spegel_pm: PluginManager) -> None:
    registry = spegel_pm.settings_registry()
    config = load_config(registry, {"content_store": "containerd",
                                    "containerd_reconnect_max_backoff": "2s"})
    settings = config.get(ContainerdSettings)
    assert settings.containerd_sock == Path("/run/containerd/containerd.sock")
    assert settings.containerd_namespace == "k8s.io"
    assert settings.containerd_content_path == Path(
        "/var/lib/containerd/io.containerd.content.v1.content")
    assert settings.containerd_reconnect_max_backoff == 2.0
    for bad in ("", "k8s..io", "a/b", "-x"):
        with pytest.raises(ConfigError, match="--containerd-namespace"):
            load_config(registry, {"containerd_namespace": bad})


def test_make_store_when_selected(spegel_pm: PluginManager, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    registry = spegel_pm.settings_registry()
    config = load_config(registry, {"content_store": "containerd",
                                    "containerd_sock": str(tmp_path / "none.sock"),
                                    "containerd_namespace": "other"})
    caplog.set_level(logging.ERROR)
    spegel_pm.configure(config)  # a missing socket is not fatal
    assert "no containerd socket" in caplog.text
    store = spegel_pm.make_content_store(config)
    assert isinstance(store, ContainerdStore)
    assert store.namespace == "other" and store.socket == tmp_path / "none.sock"
    oci = load_config(registry, {"content_store": "oci-layout", "oci_layout_path": str(tmp_path)})
    assert not isinstance(spegel_pm.make_content_store(oci), ContainerdStore)


async def test_store_without_containerd_is_not_ready_and_closes(tmp_path: Path) -> None:
    store = ContainerdStore(tmp_path / "none.sock", reconnect_max_backoff=0.2)
    assert store.status().detail == "not started"
    with pytest.raises(StoreUnavailable):
        await store.list_images()
    await store.start()
    status = store.status()
    assert not status.ready and status.detail.startswith("store disconnected: ")
    events = store.subscribe()
    await store.aclose()
    await store.aclose()
    assert [event async for event in events] == []
    assert store.status().detail == "closed"


class FakeClient:
    """Just enough of ContainerdClient for the watcher: a version and an idle event stream."""

    def __init__(self, versions: list[str]) -> None:
        self.versions = versions
        self.closed = False

    async def version(self) -> tuple[str, str]:
        return self.versions[0], ""

    def subscribe(self, filters: list[str]) -> object:
        class Idle:
            def __aiter__(self) -> Idle:
                return self

            async def __anext__(self) -> object:
                await asyncio.Event().wait()
                raise StopAsyncIteration

            def cancel(self) -> None:
                pass

        return Idle()

    async def list_images(self) -> list[object]:
        return []

    async def list_content(self) -> list[object]:
        return []

    async def aclose(self) -> None:
        self.closed = True


async def test_too_old_containerd_keeps_the_store_not_ready_until_upgraded(
    tmp_path: Path
) -> None:
    versions = ["1.5.18"]
    clients: list[FakeClient] = []

    def factory(socket: Path, namespace: str) -> FakeClient:
        clients.append(FakeClient(versions))
        return clients[-1]

    store = ContainerdStore(tmp_path / "s.sock", reconnect_max_backoff=0.05,
                            client_factory=factory)  # type: ignore[arg-type]
    async with store:
        assert "too old: spegel needs containerd >= 1.6" in store.status().detail
        events = store.subscribe()
        versions[0] = "1.6.2"
        async with asyncio.timeout(5):
            async for event in events:
                assert event.kind is StoreEventKind.RESYNC
                break
        assert store.status().ready
    assert all(client.closed for client in clients)


async def test_walker_remembers_absent_manifests_until_fresh() -> None:
    index = json.dumps({"manifests": [{"mediaType": OCI_MANIFEST, "digest": D1},
                                      {"mediaType": OCI_MANIFEST, "digest": D2}]}).encode()
    manifest = json.dumps({"config": {"mediaType": OCI_CONFIG, "digest": "sha256:" + "3" * 64},
                           "layers": [{"mediaType": OCI_LAYER_GZIP,
                                       "digest": "sha256:" + "4" * 64}]}).encode()
    root = "sha256:" + "0" * 64
    held = {root: index, D1: manifest}
    reads: list[str] = []

    async def read(digest: str) -> bytes | None:
        reads.append(digest)
        return held.get(digest)

    walker = ImageWalker()
    await walker.walk(read, root, OCI_INDEX)
    assert reads == [root, D1, D2] and walker.absent == {D2}
    assert walker.tree(root) == {root, D1, D2, "sha256:" + "3" * 64, "sha256:" + "4" * 64}
    assert walker.media_types["sha256:" + "4" * 64] == OCI_LAYER_GZIP
    await walker.walk(read, root, OCI_INDEX)
    assert reads == [root, D1, D2]  # nothing read again
    held[D2] = manifest
    await walker.walk(read, root, OCI_INDEX, fresh=True)
    assert reads == [root, D1, D2, D2] and walker.absent == set()


async def test_store_reports_each_connection_change_to_its_metrics_sink(
    tmp_path: Path
) -> None:
    from spegel_core.protocols import MetricEvent, StoreConnection
    from spegel_core.testing.fakes import RecordingSink

    broken = asyncio.Event()

    class BreakingClient(FakeClient):
        """The first event stream ends when ``broken`` is set (containerd restarted)."""

        def subscribe(self, filters: list[str]) -> object:
            if broken.is_set():
                return super().subscribe(filters)

            class Ends:
                def __aiter__(self) -> Ends:
                    return self

                async def __anext__(self) -> object:
                    await broken.wait()
                    raise StopAsyncIteration

                def cancel(self) -> None:
                    pass

            return Ends()

    def factory(socket: Path, namespace: str) -> FakeClient:
        return BreakingClient(["1.7.0"])

    reconnected = asyncio.Event()

    class Sink(RecordingSink):
        def emit(self, event: MetricEvent) -> None:
            super().emit(event)
            if len(self.of_type(StoreConnection)) == 3:
                reconnected.set()

    sink = Sink()
    store = ContainerdStore(tmp_path / "s.sock", reconnect_min_backoff=0.01,
                            reconnect_max_backoff=0.05,
                            client_factory=factory,  # type: ignore[arg-type]
                            metrics=sink)  # the hook's ``metrics`` argument
    async with store:
        assert sink.of_type(StoreConnection) == [StoreConnection(True)]
        broken.set()
        await asyncio.wait_for(reconnected.wait(), 5)
    assert sink.of_type(StoreConnection) == [
        StoreConnection(True), StoreConnection(False), StoreConnection(True)]
