"""The committed protobuf modules match their .proto files, and the client's calls match
the services those files declare."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from spegel_containerd import protogen
from spegel_containerd._pb import content_pb2, events_pb2, images_pb2, version_pb2
from spegel_containerd.client import METHODS

#: The grpcio-tools that generated the committed modules (pinned in the test extra).
GENERATOR = "1.85.1"


def test_generated_modules_are_up_to_date(tmp_path: Path) -> None:
    installed = importlib.metadata.version("grpcio-tools")  # pinned in the test extra
    assert installed == GENERATOR, f"grpcio-tools {installed}; the modules were made by {GENERATOR}"
    written = protogen.generate(tmp_path)
    committed = protogen.generated_files()
    assert [path.name for path in written] == [path.name for path in committed]
    stale = [path.name for path, fresh in zip(committed, written, strict=True)
             if path.read_bytes() != fresh.read_bytes()]
    assert not stale, f"run `python -m spegel_containerd.protogen`: {stale} differ"


def test_every_proto_has_its_module() -> None:
    stems = {path.stem for path in protogen.proto_files()}
    assert {path.name.split("_pb2")[0] for path in protogen.generated_files()} == stems
    assert "descriptor" in stems


def test_client_methods_are_declared_services() -> None:
    declared = set()
    for module in (content_pb2, events_pb2, images_pb2, version_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            declared.update(f"/{service.full_name}/{method.name}" for method in service.methods)
    assert set(METHODS.values()) == declared


@pytest.mark.parametrize(("message", "field", "number"), [
    (images_pb2.Image, "name", 1),
    (images_pb2.Image, "target", 3),
    (images_pb2.ListImagesRequest, "filters", 1),
    (content_pb2.Info, "digest", 1),
    (content_pb2.Info, "size", 2),
    (content_pb2.ReadContentRequest, "offset", 2),
    (content_pb2.ReadContentRequest, "size", 3),
    (content_pb2.ReadContentResponse, "data", 2),
    (events_pb2.SubscribeRequest, "filters", 1),
    (events_pb2.Envelope, "namespace", 2),
    (events_pb2.Envelope, "topic", 3),
    (events_pb2.Envelope, "event", 4),
])
def test_wire_field_numbers(message: type, field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number  # type: ignore[attr-defined]


def test_images_descriptor_field_numbers() -> None:
    descriptor = images_pb2.Image.DESCRIPTOR.fields_by_name["target"].message_type
    numbers = {field.name: field.number for field in descriptor.fields}
    assert numbers == {"media_type": 1, "digest": 2, "size": 3, "annotations": 5}
