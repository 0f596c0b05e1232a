"""The Go original's command lines work here: list flags, catch-all, log levels, version, env."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest

from spegel_core.cli.configuration import parse_mirror_target
from spegel_core.cli.main import build_parser, main
from spegel_core.cli.options import settings_values
from spegel_core.config import CoreSettings, SettingsRegistry, load_config
from spegel_core.credentials import Credentials
from spegel_core.errors import ConfigError
from spegel_core.plugin_manager import create_plugin_manager


def registry_config(monkeypatch: pytest.MonkeyPatch, *argv: str) -> CoreSettings:
    for name in ("SPEGEL_REGISTRY_FILTERS", "SPEGEL_MIRRORED_REGISTRIES", "SPEGEL_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    pm = create_plugin_manager(load_entrypoints=False)
    parser, registry = build_parser(pm)
    args = parser.parse_args(["registry", *argv])
    assert isinstance(registry, SettingsRegistry)
    return load_config(registry, settings_values(args, registry)).core


def test_list_flags_take_several_values_after_one_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    core = registry_config(
        monkeypatch, "--mirrored-registries", "https://docker.io", "https://ghcr.io",
        "--registry-filters", "^x{1,2}$", ":latest$", "--log-level", "WARN")
    assert core.mirrored_registries == ["docker.io", "ghcr.io"]
    assert core.registry_filters == ["^x{1,2}$", ":latest$"]
    assert core.log_level == "WARNING"


def test_commas_and_repeated_flags_keep_working(monkeypatch: pytest.MonkeyPatch) -> None:
    core = registry_config(
        monkeypatch, "--mirrored-registries", "docker.io,ghcr.io", "--mirrored-registries",
        "quay.io", "--registry-filters", "a{1,2}", "--registry-filters", "b")
    assert core.mirrored_registries == ["docker.io", "ghcr.io", "quay.io"]
    # A regex is never split at a comma.
    assert core.registry_filters == ["a{1,2}", "b"]


def test_regex_filters_from_the_environment_are_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEGEL_REGISTRY_FILTERS", '"^x{1,2}$", :latest$')
    assert CoreSettings().registry_filters == ["^x{1,2}$", ":latest$"]


@pytest.mark.parametrize("catch_all", ["_default", "*"])
def test_catch_all_registry_means_every_registry(monkeypatch: pytest.MonkeyPatch,
                                                 catch_all: str) -> None:
    core = registry_config(monkeypatch, "--mirrored-registries", catch_all)
    assert core.mirrored_registries == []


@pytest.mark.parametrize("level", ["WARN", "warn", "WARNING", "debug", "ERROR"])
def test_log_level_accepts_warn(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    core = registry_config(monkeypatch, "--log-level", level)
    assert core.log_level in ("DEBUG", "INFO", "WARNING", "ERROR")


def test_bad_log_level_names_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--log-level"):
        registry_config(monkeypatch, "--log-level", "LOUD")


def test_version_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    from spegel_core import __version__

    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"spegel {__version__} ")
    assert main(["version", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == __version__
    assert main(["--log-level", "WARN", "version", "--log-level", "INFO"]) == 0


@pytest.mark.parametrize(("target", "written"), [
    ("http://fd00::1:5000", "http://[fd00::1]:5000"),
    ("http://fd00::1", "http://[fd00::1]"),
    ("http://[fd00::1]:5000", "http://[fd00::1]:5000"),
    ("http://2001:db8::17:30020", "http://[2001:db8::17]:30020"),
    ("http://10.0.0.1:5000", "http://10.0.0.1:5000"),
])
def test_bare_ipv6_targets_are_bracketed(target: str, written: str) -> None:
    assert parse_mirror_target(target) == written


def _env_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPEGEL_MIRROR_TARGETS", "SPEGEL_MIRRORED_REGISTRIES", "SPEGEL_RESOLVE_TAGS",
                 "SPEGEL_PREPEND_EXISTING", "SPEGEL_BASIC_AUTH_DIR", "SPEGEL_LOG_LEVEL",
                 "SPEGEL_CONTAINERD_REGISTRY_CONFIG_PATH"):
        monkeypatch.delenv(name, raising=False)


def test_the_go_charts_init_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the original's chart runs on an IPv6 node, as it renders it."""
    _env_clean(monkeypatch)
    certs = tmp_path / "certs.d"
    assert main(["configuration", "--log-level=INFO",
                 f"--containerd-registry-config-path={certs}",
                 "--mirror-targets", "http://fd00::1:30020", "http://fd00::1:30021",
                 "--mirrored-registries", "https://docker.io", "https://ghcr.io",
                 "--resolve-tags=true", "--prepend-existing=false"]) == 0
    docker = tomllib.loads((certs / "docker.io" / "hosts.toml").read_text())
    assert list(docker["host"]) == ["http://[fd00::1]:30020", "http://[fd00::1]:30021"]
    assert (certs / "ghcr.io" / "hosts.toml").is_file()


@pytest.mark.parametrize("catch_all", ["_default", "*"])
def test_catch_all_writes_default_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        catch_all: str) -> None:
    _env_clean(monkeypatch)
    certs = tmp_path / "certs.d"
    assert main(["configuration", "--containerd-registry-config-path", str(certs),
                 "--mirror-targets", "http://127.0.0.1:5000",
                 "--mirrored-registries", catch_all]) == 0
    assert sorted(p.name for p in certs.iterdir()) == ["_backup", "_default"]
    document = tomllib.loads((certs / "_default" / "hosts.toml").read_text())
    assert "server" not in document and list(document["host"]) == ["http://127.0.0.1:5000"]


def test_configuration_and_cleanup_read_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _env_clean(monkeypatch)
    certs = tmp_path / "certs.d"
    (certs / "docker.io").mkdir(parents=True)
    (certs / "docker.io" / "hosts.toml").write_text('server = "https://old"\n')
    monkeypatch.setenv("SPEGEL_CONTAINERD_REGISTRY_CONFIG_PATH", str(certs))
    monkeypatch.setenv("SPEGEL_MIRROR_TARGETS", "http://127.0.0.1:5000,http://127.0.0.2:5000")
    monkeypatch.setenv("SPEGEL_MIRRORED_REGISTRIES", "ghcr.io")
    monkeypatch.setenv("SPEGEL_RESOLVE_TAGS", "false")
    monkeypatch.setenv("SPEGEL_LOG_LEVEL", "WARN")
    assert main(["configuration"]) == 0
    document = tomllib.loads((certs / "ghcr.io" / "hosts.toml").read_text())
    assert list(document["host"]) == ["http://127.0.0.1:5000", "http://127.0.0.2:5000"]
    assert document["host"]["http://127.0.0.1:5000"]["capabilities"] == ["pull"]
    # A flag wins over its variable.
    assert main(["configuration", "--mirrored-registries", "quay.io"]) == 0
    assert (certs / "quay.io" / "hosts.toml").is_file()
    assert main(["cleanup"]) == 0
    assert (certs / "docker.io" / "hosts.toml").read_text() == 'server = "https://old"\n'
    monkeypatch.setenv("SPEGEL_LOG_LEVEL", "LOUD")
    assert main(["cleanup"]) == 2


def test_basic_auth_dir_writes_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _env_clean(monkeypatch)
    secret = tmp_path / "basic-auth"
    secret.mkdir()
    (secret / "username").write_text("spegel")
    (secret / "password").write_text("s3cret\n")
    certs = tmp_path / "certs.d"
    assert main(["configuration", "--containerd-registry-config-path", str(certs),
                 "--mirror-targets", "http://127.0.0.1:5000",
                 "--mirrored-registries", "docker.io", "--basic-auth-dir", str(secret)]) == 0
    path = certs / "docker.io" / "hosts.toml"
    host = tomllib.loads(path.read_text())["host"]["http://127.0.0.1:5000"]
    assert host["header"] == {"Authorization": Credentials("spegel", "s3cret").header}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the credential is in it
    (secret / "password").write_text("")
    assert main(["configuration", "--containerd-registry-config-path", str(certs),
                 "--mirror-targets", "http://127.0.0.1:5000",
                 "--basic-auth-dir", str(secret)]) == 2


GO_CHART_REGISTRY = [
    "--log-level=INFO", "--mirror-resolve-retries=3", "--mirror-resolve-timeout=20ms",
    "--registry-addr=:5000", "--router-addr=:5001", "--metrics-addr=:9090",
    "--mirrored-registries", "https://docker.io", "https://ghcr.io",
    "--containerd-sock=/run/containerd/containerd.sock", "--containerd-namespace=k8s.io",
    "--containerd-registry-config-path=/etc/containerd/certs.d",
    "--bootstrap-kind=dns", "--dns-bootstrap-domain=spegel-bootstrap.spegel.svc.cluster.local",
    "--resolve-latest-tag=false",
    "--containerd-content-path=/var/lib/containerd/io.containerd.content.v1.content",
    "--data-dir=/var/lib/spegel", "--debug-web-enabled=true", "--otel-enabled=false",
]


def test_the_go_charts_registry_command_line_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    from spegel_core.compat import LATEST_FILTER, compat_notes, filter_patterns

    for name in ("SPEGEL_REGISTRY_FILTERS", "SPEGEL_MIRRORED_REGISTRIES", "SPEGEL_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    pm = create_plugin_manager(load_entrypoints=False)
    parser, registry = build_parser(pm)
    args = parser.parse_args(["registry", *GO_CHART_REGISTRY,
                              "--registry-filters", "^quay\\.io/"])
    assert isinstance(registry, SettingsRegistry)
    config = load_config(registry, settings_values(args, registry))
    assert config.core.mirrored_registries == ["docker.io", "ghcr.io"]
    # --resolve-latest-tag=false is the filter ':latest$', as in the original.
    assert filter_patterns(config) == ["^quay\\.io/", LATEST_FILTER]
    assert [note for note in compat_notes(config) if "otel" in note] == []
    args = parser.parse_args(["registry", "--otel-enabled=true"])
    notes = compat_notes(load_config(registry, settings_values(args, registry)))
    assert any("not implemented" in note for note in notes)


async def test_healthz_is_readyz_at_the_go_originals_path(
        mirror_client: object, make_config: object) -> None:
    from spegel_core.testing.fakes import MemoryContentStore

    config = make_config(content_store="memory")  # type: ignore[operator]
    async with mirror_client(config, MemoryContentStore()) as client:  # type: ignore[operator]
        ready = await client.get("/readyz")
        healthz = await client.get("/healthz")
    assert healthz.status_code == ready.status_code == 200
    assert healthz.json() == ready.json()


def test_log_level_before_the_command_reaches_the_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPEGEL_LOG_LEVEL", raising=False)
    pm = create_plugin_manager(load_entrypoints=False)
    parser, registry = build_parser(pm)
    assert isinstance(registry, SettingsRegistry)
    for argv, level in ((["--log-level", "WARN", "registry"], "WARNING"),
                        (["--log-level", "WARN", "registry", "--log-level", "DEBUG"], "DEBUG")):
        args = parser.parse_args(argv)
        assert load_config(registry, settings_values(args, registry)).core.log_level == level
