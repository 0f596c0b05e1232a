"""``spegel configuration`` / ``spegel cleanup``: the hosts.toml files, byte for byte."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from spegel_core.cli.configuration import (
    DOCKER_HUB_SERVER,
    MirroredRegistry,
    cleanup_hosts,
    configure_hosts,
    hosts_toml,
    parse_mirror_target,
    parse_mirrored_registry,
)
from spegel_core.cli.main import main
from spegel_core.errors import ConfigError

HEADER = ("# Written by `spegel configuration`; `spegel cleanup` restores the previous "
          "configuration.\n")
TARGETS = "http://127.0.0.1:5000,http://127.0.0.2:5000"

DOCKER_IO = HEADER + '''server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5000"]
capabilities = ["pull", "resolve"]
dial_timeout = "200ms"

[host."http://127.0.0.2:5000"]
capabilities = ["pull", "resolve"]
dial_timeout = "200ms"
'''

PLAIN_HTTP = HEADER + '''server = "http://127.0.0.1:15000"

[host."http://127.0.0.1:5000"]
capabilities = ["pull"]
dial_timeout = "200ms"
'''

DEFAULT = HEADER + '''
[host."http://127.0.0.1:5000"]
capabilities = ["pull", "resolve"]
dial_timeout = "200ms"

[host."http://127.0.0.2:5000"]
capabilities = ["pull", "resolve"]
dial_timeout = "200ms"
'''


def run(*args: str) -> int:
    return main(["configuration", *args])


def tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): path.read_text() if path.is_file() else "<dir>"
            for path in sorted(root.rglob("*"))}


def test_one_file_per_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--containerd-registry-config-path", str(tmp_path), "--mirror-targets", TARGETS,
               "--mirrored-registries", "https://docker.io,https://ghcr.io",
               "--mirrored-registries", "http://127.0.0.1:15000") == 0
    assert tree(tmp_path) == {
        "127.0.0.1:15000": "<dir>",
        "127.0.0.1:15000/hosts.toml": DOCKER_IO.replace(
            "https://registry-1.docker.io", "http://127.0.0.1:15000"),
        "_backup": "<dir>",
        "docker.io": "<dir>",
        "docker.io/hosts.toml": DOCKER_IO,
        "ghcr.io": "<dir>",
        "ghcr.io/hosts.toml": DOCKER_IO.replace("https://registry-1.docker.io",
                                                "https://ghcr.io"),
    }
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {tmp_path}/docker.io/hosts.toml", f"wrote {tmp_path}/ghcr.io/hosts.toml",
        f"wrote {tmp_path}/127.0.0.1:15000/hosts.toml"]
    for text in tree(tmp_path).values():
        if text != "<dir>":
            assert tomllib.loads(text)["host"]


def test_plain_http_registry_without_tag_resolution(tmp_path: Path) -> None:
    assert run("--containerd-registry-config-path", str(tmp_path), "--mirror-targets",
               "http://127.0.0.1:5000/", "--mirrored-registries", "http://127.0.0.1:15000",
               "--resolve-tags=false") == 0
    assert (tmp_path / "127.0.0.1:15000" / "hosts.toml").read_text() == PLAIN_HTTP


def test_no_registries_writes_default(tmp_path: Path) -> None:
    assert run("--containerd-registry-config-path", str(tmp_path), "--mirror-targets",
               TARGETS) == 0
    assert tree(tmp_path) == {"_backup": "<dir>", "_default": "<dir>",
                              "_default/hosts.toml": DEFAULT}


def test_existing_configuration_is_backed_up_once_and_restored(tmp_path: Path) -> None:
    (tmp_path / "docker.io").mkdir()
    (tmp_path / "docker.io" / "hosts.toml").write_text('server = "https://old"\n')
    (tmp_path / "quay.io").mkdir()
    (tmp_path / "quay.io" / "hosts.toml").write_text("# quay\n")
    before = tree(tmp_path)
    args = ("--containerd-registry-config-path", str(tmp_path), "--mirror-targets", TARGETS,
            "--mirrored-registries", "docker.io")
    assert run(*args) == 0
    first = tree(tmp_path)
    assert first["docker.io/hosts.toml"] == DOCKER_IO
    assert first["_backup/docker.io/hosts.toml"] == 'server = "https://old"\n'
    assert first["_backup/quay.io/hosts.toml"] == "# quay\n"
    assert "quay.io/hosts.toml" not in first
    assert run(*args) == 0
    assert tree(tmp_path) == first  # idempotent; the backup is taken once
    assert main(["cleanup", "--containerd-registry-config-path", str(tmp_path)]) == 0
    assert tree(tmp_path) == before
    assert main(["cleanup", "--containerd-registry-config-path", str(tmp_path)]) == 0
    assert tree(tmp_path) == before


def test_prepend_existing_keeps_old_hosts_after_ours(tmp_path: Path) -> None:
    old = tmp_path / "docker.io"
    old.mkdir()
    (old / "ca.crt").write_text("CERT")
    (old / "hosts.toml").write_text(
        'server = "https://mirror.corp.example"\nskip_verify = true\n\n'
        '[host."https://cache.corp.example:8443"]\ncapabilities = ["pull"]\nca = "ca.crt"\n'
        '[host."https://cache.corp.example:8443".header]\nx-team = ["infra"]\n\n'
        '[host."http://127.0.0.1:5000"]\ncapabilities = ["pull"]\n')
    assert run("--containerd-registry-config-path", str(tmp_path), "--mirror-targets",
               "http://127.0.0.1:5000", "--mirrored-registries", "docker.io",
               "--prepend-existing") == 0
    text = (old / "hosts.toml").read_text()
    assert text == HEADER + '''server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5000"]
capabilities = ["pull", "resolve"]
dial_timeout = "200ms"

[host."https://cache.corp.example:8443"]
capabilities = ["pull"]
ca = "ca.crt"

[host."https://cache.corp.example:8443".header]
x-team = ["infra"]

[host."https://mirror.corp.example"]
capabilities = ["pull", "resolve"]
skip_verify = true
'''
    assert list(tomllib.loads(text)["host"]) == [
        "http://127.0.0.1:5000", "https://cache.corp.example:8443", "https://mirror.corp.example"]
    assert (old / "ca.crt").read_text() == "CERT"
    assert (tmp_path / "_backup" / "docker.io" / "ca.crt").read_text() == "CERT"


@pytest.mark.parametrize(("args", "message"), [
    (("--mirror-targets", "127.0.0.1:5000"), "--mirror-targets: invalid URL '127.0.0.1:5000'"),
    (("--mirror-targets", "ftp://x"), "--mirror-targets: invalid URL"),
    (("--mirror-targets", "http://x:99999"), "--mirror-targets: invalid URL"),
    (("--mirror-targets", "http://x/v2/path"), "--mirror-targets: invalid URL"),
    (("--mirror-targets", "http://u:p@x"), "--mirror-targets: invalid URL"),
    (("--mirror-targets", ","), "--mirror-targets: at least one mirror target"),
    (("--mirror-targets", "http://x", "--mirrored-registries", "https://a b"),
     "--mirrored-registries: invalid registry"),
    (("--mirror-targets", "http://x", "--mirrored-registries", "https://ghcr.io/path"),
     "--mirrored-registries: invalid registry URL"),
    (("--mirror-targets", "http://x", "--resolve-tags=maybe"),
     "--resolve-tags: expected true or false"),
])
def test_invalid_values_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            args: tuple[str, ...], message: str) -> None:
    target = tmp_path / "certs.d"
    assert run("--containerd-registry-config-path", str(target), *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spegel: error: {message}") and err.count("\n") == 1
    assert not target.exists()


def test_missing_mirror_targets_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPEGEL_MIRROR_TARGETS", raising=False)
    assert run("--containerd-registry-config-path", "/nonexistent") == 2
    assert "--mirror-targets" in capsys.readouterr().err


def test_parsers() -> None:
    assert parse_mirror_target("HTTP://Node:5000/") == "http://node:5000"
    assert parse_mirrored_registry("docker.io") == MirroredRegistry("docker.io", DOCKER_HUB_SERVER)
    assert parse_mirrored_registry("https://registry-1.docker.io") == MirroredRegistry(
        "docker.io", DOCKER_HUB_SERVER)
    assert parse_mirrored_registry("ghcr.io") == MirroredRegistry("ghcr.io", "https://ghcr.io")
    assert parse_mirrored_registry("http://10.0.0.1:5000") == MirroredRegistry(
        "10.0.0.1:5000", "http://10.0.0.1:5000")
    with pytest.raises(ConfigError):
        parse_mirrored_registry("")


def test_every_file_has_a_host_table() -> None:
    text = hosts_toml(None, ["http://a:1"], existing={"http://a:1": {"capabilities": ["pull"]}})
    assert list(tomllib.loads(text)["host"]) == ["http://a:1"]  # no duplicate table


def test_cleanup_without_backup_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "docker.io").mkdir()
    assert cleanup_hosts(tmp_path) is False
    assert tree(tmp_path) == {"docker.io": "<dir>"}


def test_interrupted_backup_is_resumed(tmp_path: Path) -> None:
    (tmp_path / "_backup.partial" / "ghcr.io").mkdir(parents=True)
    (tmp_path / "quay.io").mkdir()
    configure_hosts(tmp_path, ["http://a:1"], [])
    assert sorted(p.name for p in (tmp_path / "_backup").iterdir()) == ["ghcr.io", "quay.io"]
    assert cleanup_hosts(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ghcr.io", "quay.io"]
