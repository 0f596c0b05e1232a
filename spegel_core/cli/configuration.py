"""``spegel configuration`` and ``spegel cleanup``: point containerd at the node's mirror.

containerd reads one ``hosts.toml`` per registry from its registry config path
(``config_path`` of the CRI registry settings, usually ``/etc/containerd/certs.d``):
``<dir>/<host[:port]>/hosts.toml``, or ``<dir>/_default/hosts.toml`` for every
registry without its own directory. ``spegel configuration`` writes those files:

- a ``server`` line: ``https://registry-1.docker.io`` for ``docker.io``, the
  registry URL itself otherwise (``http://`` kept for plain-http registries);
  none in ``_default``;
- one ``[host."<target>"]`` table per mirror target, in order, with
  ``capabilities = ["pull", "resolve"]`` (``["pull"]`` with ``--resolve-tags=false``)
  and ``dial_timeout = "200ms"``. Every file has at least one host table:
  containerd 1.6 silently ignores a ``hosts.toml`` without one.

What was in the directory before is moved once into ``<dir>/_backup/`` and put
back by ``spegel cleanup``. With ``--prepend-existing`` the host tables of a
registry's previous ``hosts.toml`` (and its previous ``server``, as a host) are
kept after ours, with the other files of its directory (certificates).
Running the command again gives the same files.

The Go original's command lines work as they are: several values after one flag
(``--mirror-targets http://a:5000 http://b:5000``), ``_default`` or ``*`` in
``--mirrored-registries`` for every registry, a bare IPv6 target
(``http://fd00::1:5000``, what ``$(NODE_IP)`` renders on an IPv6 node; the last group
is the port) written bracketed, and every flag also read from its ``SPEGEL_*``
variable. With ``--basic-auth-dir`` each host table carries the ``Authorization``
header of the mirror's credentials (the file is then readable by root only).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spegel_core.config import CATCH_ALL_REGISTRIES
from spegel_core.errors import ConfigError
from spegel_core.registry_urls import registry_host

__all__ = [
    "BACKUP_DIR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DIR",
    "DOCKER_HUB_SERVER",
    "MirroredRegistry",
    "add_configuration_commands",
    "cleanup_hosts",
    "configure_hosts",
    "hosts_toml",
    "parse_mirror_target",
    "parse_mirrored_registry",
    "run_configuration_command",
]

DEFAULT_CONFIG_PATH = Path("/etc/containerd/certs.d")
BACKUP_DIR = "_backup"
DEFAULT_DIR = "_default"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"
DIAL_TIMEOUT = "200ms"
HOSTS_FILE = "hosts.toml"
HEADER = ("# Written by `spegel configuration`; `spegel cleanup` restores the previous "
          "configuration.\n")
_PARTIAL = BACKUP_DIR + ".partial"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class MirroredRegistry:
    """A registry to mirror: its directory name (``host[:port]``) and its server URL."""

    directory: str
    server: str | None


# -- parsing ----------------------------------------------------------------------------
def _split(values: Iterable[str]) -> list[str]:
    items: list[str] = []
    for value in values:
        items.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(items))


def _bracket_ipv6(text: str) -> str:
    """``http://fd00::1:5000`` -> ``http://[fd00::1]:5000`` (the last group is the port)."""
    scheme, sep, rest = text.partition("://")
    netloc, slash, path = rest.partition("/")
    if not sep or netloc.count(":") < 2 or netloc.startswith("["):
        return text
    host, _, port = netloc.rpartition(":")
    for candidate, suffix in ((host, f":{port}"), (netloc, "")):
        if suffix and not port.isdigit():
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return f"{scheme}://[{candidate}]{suffix}{slash}{path}"
    return text


def parse_mirror_target(value: str) -> str:
    """``http(s)://host[:port]`` normalised (no trailing slash); raises :class:`ConfigError`.

    A bare IPv6 address is bracketed: ``http://fd00::1:5000`` is ``http://[fd00::1]:5000``.
    """
    text = _bracket_ipv6(value.strip())
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme not in ("http", "https") or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or "@" in parts.netloc):
        raise ConfigError("--mirror-targets",
                          f"invalid URL {text[:80]!r} (expected http://host[:port])")
    return f"{parts.scheme}://{parts.netloc.lower()}"


def parse_mirrored_registry(value: str) -> MirroredRegistry:
    """A registry URL or host (``https://ghcr.io``, ``docker.io``, ``http://10.0.0.1:5000``).

    ``_default`` and ``*`` are the catch-all: ``_default/hosts.toml``, no server line.
    """
    text = value.strip()
    if text in CATCH_ALL_REGISTRIES:
        return MirroredRegistry(DEFAULT_DIR, None)
    try:
        host = registry_host(text)
    except ValueError as exc:
        raise ConfigError("--mirrored-registries", str(exc)) from None
    if host == "docker.io":
        return MirroredRegistry(host, DOCKER_HUB_SERVER)
    if "://" in text:
        parts = urlsplit(text)
        return MirroredRegistry(host, f"{parts.scheme}://{parts.netloc}")
    return MirroredRegistry(host, f"https://{host}")


def _bool(flag: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigError(flag, f"expected true or false (got {value[:40]!r})")


# -- writing TOML ------------------------------------------------------------------------
def _string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return _string(str(value))


def _table(header: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{header}]"]
    subtables = []
    for key, value in values.items():
        if isinstance(value, dict):
            subtables.append(_table(f"{header}.{_key(key)}", value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n" + "".join("\n" + table for table in subtables)


def hosts_toml(server: str | None, targets: Sequence[str], *, resolve_tags: bool = True,
               existing: Mapping[str, Mapping[str, Any]] | None = None,
               authorization: str | None = None) -> str:
    """The text of one ``hosts.toml``: ``server``, our targets, then ``existing`` host tables.

    ``authorization`` (an ``Authorization`` header value) is sent to our targets only.
    """
    capabilities = ["pull", "resolve"] if resolve_tags else ["pull"]
    parts = [HEADER + (f"server = {_string(server)}\n" if server else "")]
    ours: dict[str, Any] = {"capabilities": capabilities, "dial_timeout": DIAL_TIMEOUT}
    if authorization:
        ours["header"] = {"Authorization": authorization}
    for target in targets:
        parts.append(_table(f"host.{_string(target)}", ours))
    for host, values in (existing or {}).items():
        if host not in targets:
            parts.append(_table(f"host.{_string(host)}", values))
    return "\n".join(parts)


def _previous_hosts(path: Path, server: str | None) -> dict[str, dict[str, Any]]:
    """The host tables of an old ``hosts.toml``, and its server as a last host table."""
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(f"spegel: warning: not keeping {path}: {exc}", file=sys.stderr)
        return {}
    hosts = document.get("host")
    found: dict[str, dict[str, Any]] = {}
    if isinstance(hosts, dict):
        found = {str(k): dict(v) for k, v in hosts.items() if isinstance(v, dict)}
    old_server = document.get("server")
    if isinstance(old_server, str) and old_server.rstrip("/") != (server or "").rstrip("/"):
        settings = {k: v for k, v in document.items() if k not in ("server", "host")}
        found.setdefault(old_server, {"capabilities": ["pull", "resolve"], **settings})
    return found


# -- the directory -----------------------------------------------------------------------------
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(name, mode)
    os.replace(name, path)


def _backup(config_path: Path) -> Path:
    """Move what ``config_path`` holds into ``_backup/``, once (resumes a broken move)."""
    backup = config_path / BACKUP_DIR
    if backup.is_dir():
        return backup
    partial = config_path / _PARTIAL
    partial.mkdir(exist_ok=True)
    for entry in sorted(config_path.iterdir()):
        if entry.name not in (BACKUP_DIR, _PARTIAL):
            entry.rename(partial / entry.name)
    partial.rename(backup)
    return backup


def configure_hosts(config_path: Path, targets: Sequence[str],
                    registries: Sequence[MirroredRegistry], *, resolve_tags: bool = True,
                    prepend_existing: bool = False,
                    authorization: str | None = None) -> list[Path]:
    """Write the ``hosts.toml`` files; returns them in the order written."""
    if not targets:
        raise ConfigError("--mirror-targets", "at least one mirror target is required")
    config_path.mkdir(parents=True, exist_ok=True)
    backup = _backup(config_path)
    for entry in sorted(config_path.iterdir()):
        if entry.name != BACKUP_DIR:
            _remove(entry)
    written = []
    entries = list(registries) or [MirroredRegistry(DEFAULT_DIR, None)]
    for registry in entries:
        directory = config_path / registry.directory
        old = backup / registry.directory
        existing: dict[str, dict[str, Any]] = {}
        if prepend_existing and old.is_dir():
            shutil.copytree(old, directory, symlinks=True)
            if (old / HOSTS_FILE).is_file():
                existing = _previous_hosts(old / HOSTS_FILE, registry.server)
        path = directory / HOSTS_FILE
        _write(path, hosts_toml(registry.server, targets, resolve_tags=resolve_tags,
                                existing=existing, authorization=authorization),
               0o600 if authorization else 0o644)
        written.append(path)
    return written


def cleanup_hosts(config_path: Path) -> bool:
    """Remove what ``configure_hosts`` wrote and restore ``_backup/``; False if no backup."""
    backup = config_path / BACKUP_DIR
    if not backup.is_dir():
        partial = config_path / _PARTIAL
        if not partial.is_dir():
            return False
        backup = partial
    for entry in sorted(config_path.iterdir()):
        if entry.name not in (BACKUP_DIR, _PARTIAL):
            _remove(entry)
    for entry in sorted(backup.iterdir()):
        entry.rename(config_path / entry.name)
    backup.rmdir()
    return True


# -- the commands -------------------------------------------------------------------------------
#: The environment variable of each flag (``spegel registry`` reads its own the same way).
ENV = {
    "containerd_registry_config_path": "SPEGEL_CONTAINERD_REGISTRY_CONFIG_PATH",
    "mirror_targets": "SPEGEL_MIRROR_TARGETS",
    "mirrored_registries": "SPEGEL_MIRRORED_REGISTRIES",
    "resolve_tags": "SPEGEL_RESOLVE_TAGS",
    "prepend_existing": "SPEGEL_PREPEND_EXISTING",
    "basic_auth_dir": "SPEGEL_BASIC_AUTH_DIR",
    "addr": "SPEGEL_ADDR",
    "probe_endpoint": "SPEGEL_PROBE_ENDPOINT",
    "threshold": "SPEGEL_THRESHOLD",
    "period": "SPEGEL_PERIOD",
}


def _config_path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--containerd-registry-config-path", type=Path, default=None,
                        metavar="DIR",
                        help="containerd's registry config_path [env "
                             f"SPEGEL_CONTAINERD_REGISTRY_CONFIG_PATH; default "
                             f"{DEFAULT_CONFIG_PATH}].")


def add_configuration_commands(commands: Any) -> list[argparse.ArgumentParser]:
    """Add the ``configuration`` and ``cleanup`` subcommands; returns their parsers."""
    configuration = commands.add_parser(
        "configuration", help="Write containerd hosts.toml files that use this node's mirror.")
    _config_path_argument(configuration)
    configuration.add_argument("--mirror-targets", nargs="+", action="extend", default=[],
                               metavar="URL",
                               help="Mirror URLs containerd asks first, in order "
                                    "(e.g. http://127.0.0.1:5000); several after one flag, "
                                    "repeated or comma-separated [env SPEGEL_MIRROR_TARGETS].")
    configuration.add_argument("--mirrored-registries", nargs="+", action="extend", default=[],
                               metavar="URL",
                               help="Registries to mirror; none, _default or *: every registry "
                                    "(_default/hosts.toml) [env SPEGEL_MIRRORED_REGISTRIES].")
    configuration.add_argument("--resolve-tags", nargs="?", const="true", default=None,
                               metavar="true|false",
                               help="Let the mirror resolve tags [env SPEGEL_RESOLVE_TAGS; "
                                    "default true].")
    configuration.add_argument("--prepend-existing", nargs="?", const="true", default=None,
                               metavar="true|false",
                               help="Keep the previous host tables after the mirror's "
                                    "[env SPEGEL_PREPEND_EXISTING; default false].")
    configuration.add_argument("--basic-auth-dir", type=Path, default=None, metavar="DIR",
                               help="Directory with the mirror's 'username' and 'password' "
                                    "files: hosts.toml sends them [env SPEGEL_BASIC_AUTH_DIR].")
    cleanup = commands.add_parser("cleanup",
                                  help="Undo `spegel configuration` (restore _backup/).")
    _config_path_argument(cleanup)
    cleanup.add_argument("--addr", default=None, metavar="HOST:PORT",
                         help="Then answer GET /healthz here until stopped (the Go "
                              "original's uninstall hook) [env SPEGEL_ADDR].")
    wait = commands.add_parser(
        "cleanup-wait", help="Wait until every `cleanup --addr` behind an endpoint answers.")
    wait.add_argument("--probe-endpoint", default=None, metavar="HOST:PORT",
                      help="Name (all its addresses are probed) and port "
                           "[env SPEGEL_PROBE_ENDPOINT].")
    wait.add_argument("--threshold", default=None, metavar="N",
                      help="Rounds in a row that must succeed [env SPEGEL_THRESHOLD; "
                           "default 3].")
    wait.add_argument("--period", default=None, metavar="DURATION",
                      help="Time between rounds [env SPEGEL_PERIOD; default 2s].")
    return [configuration, cleanup, wait]


def _setting(args: argparse.Namespace, name: str, environ: Mapping[str, str]) -> Any:
    """A flag's value, else its ``SPEGEL_*`` variable, else None."""
    value = getattr(args, name, None)
    if value not in (None, []):
        return value
    raw = environ.get(ENV[name], "").strip()
    return raw or None


def run_configuration_command(args: argparse.Namespace,
                              environ: Mapping[str, str] | None = None) -> int:
    """Run ``configuration`` or ``cleanup``; raises :class:`ConfigError` for bad values."""
    environ = os.environ if environ is None else environ
    config_path = Path(_setting(args, "containerd_registry_config_path", environ)
                       or DEFAULT_CONFIG_PATH)
    if args.command == "cleanup-wait":
        return _cleanup_wait(args, environ)
    try:
        if args.command == "cleanup":
            if cleanup_hosts(config_path):
                print(f"restored {config_path / BACKUP_DIR} into {config_path}", flush=True)
            else:
                print(f"nothing to restore: {config_path / BACKUP_DIR} does not exist",
                      flush=True)
            addr = _setting(args, "addr", environ)
            if addr:
                from spegel_core.cli.cleanup_probe import serve_health

                return serve_health(_address("--addr / SPEGEL_ADDR", addr))
            return 0
        raw_targets = _setting(args, "mirror_targets", environ)
        if not raw_targets:
            raise ConfigError("--mirror-targets / SPEGEL_MIRROR_TARGETS",
                              "at least one mirror target is required")
        targets = [parse_mirror_target(item) for item in _split(_as_list(raw_targets))]
        raw_registries = _as_list(_setting(args, "mirrored_registries", environ) or [])
        registries = list({registry.directory: registry for registry in
                           map(parse_mirrored_registry, _split(raw_registries))
                           }.values())
        auth_dir = _setting(args, "basic_auth_dir", environ)
        authorization = _authorization(Path(auth_dir)) if auth_dir else None
        written = configure_hosts(
            config_path, targets, registries,
            resolve_tags=_bool("--resolve-tags",
                               _setting(args, "resolve_tags", environ) or "true"),
            prepend_existing=_bool("--prepend-existing",
                                   _setting(args, "prepend_existing", environ) or "false"),
            authorization=authorization)
    except OSError as exc:
        raise ConfigError("--containerd-registry-config-path", str(exc)) from None
    for path in written:
        print(f"wrote {path}")
    return 0


def _address(flag: str, value: str) -> Any:
    from spegel_core.config import Address

    try:
        return Address.parse(value)
    except ValueError as exc:
        raise ConfigError(flag, str(exc)) from None


def _cleanup_wait(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from spegel_core.cli.cleanup_probe import wait_for_cleanup
    from spegel_core.config import parse_duration

    endpoint = _setting(args, "probe_endpoint", environ)
    if not endpoint:
        raise ConfigError("--probe-endpoint / SPEGEL_PROBE_ENDPOINT", "required")
    if not _address("--probe-endpoint", endpoint).host:
        raise ConfigError("--probe-endpoint", f"needs a host name: {endpoint!r}")
    threshold_text = str(_setting(args, "threshold", environ) or "3")
    if not threshold_text.isdigit() or int(threshold_text) < 1:
        raise ConfigError("--threshold / SPEGEL_THRESHOLD",
                          f"expected a positive integer (got {threshold_text[:20]!r})")
    try:
        period = parse_duration(_setting(args, "period", environ) or "2s")
    except ValueError as exc:
        raise ConfigError("--period / SPEGEL_PERIOD", str(exc)) from None
    return wait_for_cleanup(endpoint, threshold=int(threshold_text), period=period)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _authorization(directory: Path) -> str:
    from spegel_core.credentials import load_credentials

    try:
        return load_credentials(directory).header
    except ValueError as exc:
        raise ConfigError("--basic-auth-dir / SPEGEL_BASIC_AUTH_DIR", str(exc)) from None
