"""Start-up warnings from containerd's CRI configuration (``cri_config``)."""

from __future__ import annotations

import pytest

from spegel_containerd.cri_config import decode_status_info, mirror_warnings


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_decodes_the_info_map_of_a_status_response() -> None:
    entry = _field(1, b"config") + _field(2, b'{"registry":{"configPath":"/x"}}')
    other = _field(1, b"golang") + _field(2, b'"go1.22"')
    raw = _field(1, b"\x0a\x00") + _field(2, entry) + _field(2, other) + b"\x18\x05"
    assert decode_status_info(raw) == {"config": '{"registry":{"configPath":"/x"}}',
                                       "golang": '"go1.22"'}
    with pytest.raises(ValueError):
        decode_status_info(b"\x12\x7f")


# containerd 1.6/1.7 report the CRI config with camelCase keys, nested.
V16_OK = {"containerd": {"discardUnpackedLayers": False},
          "registry": {"configPath": "/etc/containerd/certs.d"}}


def test_a_good_1_6_configuration_gives_no_warning() -> None:
    assert mirror_warnings("1.6.20", V16_OK) == []
    assert mirror_warnings("1.6.20", None) == []  # no CRI plugin: nothing to say


def test_no_config_path_means_no_mirror() -> None:
    (warning,) = mirror_warnings("1.7.3", {"registry": {"configPath": ""},
                                           "containerd": {"discardUnpackedLayers": False}})
    assert "config_path is not set" in warning


def test_discard_unpacked_layers() -> None:
    config = {**V16_OK, "containerd": {"discardUnpackedLayers": True}}
    (warning,) = mirror_warnings("1.7.3", config)
    assert "discard_unpacked_layers = true" in warning


def test_containerd_2_transfer_service_with_a_config_path_list() -> None:
    config = {"registry": {"configPath": "/etc/containerd/certs.d:/etc/docker/certs.d"},
              "useLocalImagePull": False, "containerd": {"discardUnpackedLayers": False}}
    (warning,) = mirror_warnings("v2.1.5", config)
    assert "transfer service" in warning and "use_local_image_pull = true" in warning
    # The fixes: local pull, or one directory; discarding layers also forces local pull.
    assert mirror_warnings("2.1.5", {**config, "useLocalImagePull": True}) == []
    one_dir = {**config, "registry": {"configPath": "/etc/containerd/certs.d"}}
    assert mirror_warnings("2.1.5", one_dir) == []
    discarding = {**config, "containerd": {"discardUnpackedLayers": True}}
    assert ["transfer service" in w for w in mirror_warnings("2.1.5", discarding)] == [False]


def test_containerd_2_without_the_setting_says_where_to_look() -> None:
    (warning,) = mirror_warnings("2.0.0", V16_OK)
    assert "use_local_image_pull" in warning
