"""Configuration: pydantic-settings models, one per plugin, validated once.

Each field of a settings model is a ``--flag`` (underscores become dashes) and a
``SPEGEL_<FIELD>`` environment variable; a flag wins over the environment. The
core validates everything once and hands a frozen :class:`SpegelConfig` to hooks.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from spegel_core.errors import ConfigError, PluginError

T = TypeVar("T", bound=BaseModel)

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``"20ms"``, ``"3s"``, ``"15m"``, ``"1.5"`` (seconds) or a number -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 20ms, 3s or 15m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if not match:
            raise ValueError(f"invalid duration {str(value)[:40]!r} (use e.g. 20ms, 3s, 15m)")
        seconds = float(match["value"]) * _UNITS[match["unit"]]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


@dataclass(frozen=True, slots=True)
class Address:
    """A listen address ``host:port``; an empty host means every interface."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: object) -> Address:
        """Parse ``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT``; an :class:`Address` is returned as is.

        :raises ValueError: not of that form, a port outside 0-65535 or a malformed host.
        """
        if isinstance(value, Address):
            return value
        text = str(value).strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"invalid address {text[:60]!r} (expected HOST:PORT or :PORT)")
        number = int(port)
        if not 0 <= number < 65536:
            raise ValueError(f"invalid port {number} in {text[:60]!r}")
        if host and not re.fullmatch(r"[A-Za-z0-9.\-:]+", host):
            raise ValueError(f"invalid host in {text[:60]!r}")
        return cls(host, number)

    @property
    def bind_host(self) -> str:
        """The host to bind: ``0.0.0.0`` (every IPv4 interface) when the host is empty."""
        return self.host or "0.0.0.0"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


AddressField = Annotated[Address, NoDecode, BeforeValidator(Address.parse)]


def _split_list(value: object) -> object:
    """A string or a list of strings, each split at commas (``a,b`` or ``a b`` or both)."""
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list | tuple) and all(isinstance(item, str) for item in items):
        return list(dict.fromkeys(part.strip() for item in items for part in item.split(",")
                                  if part.strip()))
    return value


def _regex_list(value: object) -> object:
    """Regexes: each flag value is one, never split at a comma (``^x{1,2}$`` is one).

    An environment variable holds several as one CSV line, as the Go original reads
    its ``REGISTRY_FILTERS`` (quote a regex that contains a comma).
    """
    if isinstance(value, str):
        rows = list(csv.reader([value], skipinitialspace=True)) if value.strip() else [[]]
        return [item for item in rows[0] if item]
    return value


#: A list setting: several values after one flag, repeated flags, commas, or the env.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
#: A list of regexes: several values after one flag or repeated flags; no comma splitting.
RegexList = Annotated[list[str], NoDecode, BeforeValidator(_regex_list)]
#: ``--mirrored-registries`` values that mean every registry (the Go original's).
CATCH_ALL_REGISTRIES = ("_default", "*")
#: Log levels, with the Go original's ``WARN`` accepted for ``WARNING``.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level_name(value: object) -> str:
    """``warn``/``WARN`` -> ``WARNING``; raises ValueError for an unknown level."""
    text = str(value).strip().upper()
    text = "WARNING" if text == "WARN" else text
    if text not in LOG_LEVELS:
        raise ValueError(f"invalid log level {str(value)[:20]!r} (DEBUG, INFO, WARN, ERROR)")
    return text


class SpegelSettings(BaseSettings):
    """Base of every settings model: ``SPEGEL_`` env prefix, frozen, no unknown keys."""

    model_config = SettingsConfigDict(
        env_prefix="SPEGEL_", frozen=True, extra="forbid", validate_default=True
    )


class CoreSettings(SpegelSettings):
    """Settings of the core (the node, the mirror, the routing glue)."""

    registry_addr: AddressField = Field(
        default=Address("", 5000), description="Address the OCI mirror listens on."
    )
    router_addr: AddressField = Field(
        default=Address("", 5001), description="Address the router listens on (UDP)."
    )
    metrics_addr: AddressField = Field(
        default=Address("", 9090), description="Address of the metrics endpoint."
    )
    content_store: str = Field(default="oci-layout", description="Content store to use.")
    router: str = Field(default="kademlia",
                        description="Router to find peers with ('none': local content only).")
    bootstrap_kind: CommaList = Field(default_factory=list, description="Bootstrap sources.")
    mirrored_registries: CommaList = Field(
        default_factory=list,
        description="Registries served (URLs or hosts); empty, _default or * means every "
        "registry.",
    )
    registry_filters: RegexList = Field(
        default_factory=list,
        description="Regexes matched against registry/repository[:tag]: matching content is "
        "neither served nor advertised (one regex per value; never split at commas).",
    )
    mirror_resolve_timeout: Duration = Field(
        default=0.02, description="How long to wait for a provider before giving up (e.g. 20ms)."
    )
    mirror_resolve_retries: int = Field(default=3, ge=0, le=100, description="Providers to try.")
    mirror_peer_penalty: Duration = Field(
        default=30.0, description="How long a provider that failed is tried last (for every "
        "key, or for the content it failed on: docs/security.md)."
    )
    mirror_max_client_connections: int = Field(
        default=128, ge=1, le=65536,
        description="Open connections one client address may hold (more are closed at once).",
    )
    mirror_header_timeout: Duration = Field(
        default=10.0, gt=0,
        description="Time a connection has to send a request's headers (stops slow clients).",
    )
    peer_cidrs: CommaList = Field(
        default_factory=list,
        description="Networks peers may be in (e.g. 10.0.0.0/8); others are never asked for "
        "content nor taken as DHT contacts. Empty: any address.",
    )
    peer_blob_verify: Literal["mirror", "client"] = Field(
        default="mirror",
        description="Who checks the digest of a whole blob fetched from a peer: 'mirror' "
        "hashes it while relaying (a bad blob is never completed; one core's sha256 bounds "
        "the hop), 'client' relays it socket to socket unhashed and leaves the check to the "
        "client (containerd verifies every blob). Manifests are always verified here.",
    )
    resolve_tags: bool = Field(default=True, description="Advertise and resolve tags.")
    advertise_arriving: bool = Field(
        default=True,
        description="Advertise content while the store is still downloading it (containerd's "
        "ingests) and serve it to peers as it lands; false: only committed content.",
    )
    single_flight: bool = Field(
        default=True,
        description="On a miss, claim the digest at its rendezvous in the DHT: the first "
        "claimant fetches upstream, the others stream from it (a tree, docs/fleet.md); "
        "false: every node that misses goes upstream.",
    )
    single_flight_wait: Duration = Field(
        default=5.0, gt=0, le=30.0,
        description="How long a claimant that was told to wait holds a request for its "
        "parent's first bytes before answering 404 (containerd then goes upstream).",
    )
    peer_fanout: int = Field(
        default=4, ge=1, le=255,
        description="Most nodes one provider feeds during a single flight.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level (DEBUG, INFO, WARN or WARNING, ERROR)."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log format.")
    drain_timeout: Duration = Field(
        default=10.0, description="On SIGTERM, how long in-flight responses may take."
    )
    data_dir: Path | None = Field(default=None, description="Where to keep state across restarts.")
    basic_auth_dir: Path | None = Field(
        default=None,
        description="Directory with 'username' and 'password' files: every mirror request "
        "must carry these credentials (HTTP basic auth), and peers send them.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return log_level_name(value) if isinstance(value, str) else value

    @field_validator("registry_filters")
    @classmethod
    def _compile(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regex {pattern!r}: {exc}") from exc
        return value

    @field_validator("peer_cidrs")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        from spegel_core.peer_filter import parse_networks

        return [str(network) for network in parse_networks(value)]

    @field_validator("mirrored_registries")
    @classmethod
    def _registries(cls, value: list[str]) -> list[str]:
        from spegel_core.registry_urls import registry_host

        if any(item in CATCH_ALL_REGISTRIES for item in value):
            return []  # the catch-all: every registry, as with an empty list
        return [registry_host(item) for item in value]

    @field_validator("basic_auth_dir")
    @classmethod
    def _basic_auth(cls, value: Path | None) -> Path | None:
        if value is not None:
            from spegel_core.credentials import load_credentials

            load_credentials(value)  # unreadable or empty files fail at start, by flag
        return value


def flag_name(field_name: str) -> str:
    """The command-line flag of a settings field: ``x_y`` -> ``--x-y``."""
    return "--" + field_name.replace("_", "-")


def env_name(field_name: str) -> str:
    """The environment variable of a settings field: ``x_y`` -> ``SPEGEL_X_Y``."""
    return "SPEGEL_" + field_name.upper()


class SettingsRegistry:
    """Collects the settings models plugins declare (``spegel_add_settings``)."""

    def __init__(self) -> None:
        self._models: list[type[SpegelSettings]] = [CoreSettings]
        self._owners: dict[str, str] = {}
        for model in self._models:
            for name in model.model_fields:
                self._owners[name] = "core"

    def add(self, model: type[SpegelSettings], *, owner: str = "plugin") -> None:
        """Declare a settings model: each field becomes a flag and an environment variable.

        :param model: a subclass of :class:`SpegelSettings`; adding it twice is a no-op.
        :param owner: who declares it, as shown in errors (use your plugin's name). It
            only labels messages: when two models declare the same field, the
            :class:`PluginError` reads "setting --x of <owner> is already declared by
            <first owner>". It has no effect on lookup (``config.get(Model)``).
        :raises PluginError: ``model`` is not a settings model, or a field is taken.
        """
        if model in self._models:
            return
        if not (isinstance(model, type) and issubclass(model, BaseSettings)):
            raise PluginError(f"settings model of {owner} must subclass SpegelSettings")
        for name in model.model_fields:
            if name in self._owners:
                raise PluginError(
                    f"setting {flag_name(name)} of {owner} is already declared by "
                    f"{self._owners[name]}"
                )
            self._owners[name] = owner
        self._models.append(model)

    @property
    def models(self) -> list[type[SpegelSettings]]:
        """The declared models, the core's first, in the order they were added."""
        return list(self._models)

    def fields(self) -> Iterable[tuple[type[SpegelSettings], str, Any]]:
        """Every ``(model, field name, pydantic FieldInfo)`` of the declared models."""
        for model in self._models:
            for name, info in model.model_fields.items():
                yield model, name, info


@dataclass(frozen=True)
class SpegelConfig:
    """The validated configuration handed to every hook."""

    core: CoreSettings
    sections: Mapping[type[BaseModel], BaseModel] = field(default_factory=dict)

    def get(self, model: type[T]) -> T:
        """The validated instance of a settings model (``config.get(MySettings)``).

        :raises PluginError: ``model`` was never added to the settings registry.
        """
        if model is CoreSettings:
            return self.core  # type: ignore[return-value]
        try:
            section = self.sections[model]
        except KeyError:
            raise PluginError(f"settings model {model.__name__} was not registered") from None
        assert isinstance(section, model)
        return section


def load_config(registry: SettingsRegistry, values: Mapping[str, object]) -> SpegelConfig:
    """Validate ``values`` (from flags; missing ones come from ``SPEGEL_*`` or defaults).

    Raises :class:`ConfigError` naming the first offending flag.
    """
    sections: dict[type[BaseModel], BaseModel] = {}
    for model in registry.models:
        own = {name: values[name] for name in model.model_fields if name in values}
        try:
            sections[model] = model(**own)
        except ValidationError as exc:
            raise _config_error(exc) from None
        except SettingsError as exc:  # an environment value that cannot even be decoded
            raise ConfigError("environment", str(exc)) from None
    core = sections.pop(CoreSettings)
    assert isinstance(core, CoreSettings)
    return SpegelConfig(core=core, sections=sections)


def _config_error(exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    loc = error.get("loc") or ("?",)
    name = str(loc[0])
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    if error.get("type") == "extra_forbidden":
        return ConfigError(flag_name(name), "unknown setting")
    shown = f" (got {value!r})" if isinstance(value, str | int | float) else ""
    return ConfigError(f"{flag_name(name)} / {env_name(name)}", f"{message}{shown}")
