"""Flags generated from the settings models plugins declare."""

from __future__ import annotations

import argparse
import os
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from spegel_core.config import SettingsRegistry, env_name, flag_name


def _is_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return bool(typing.get_origin(annotation) is typing.Union
                and bool in typing.get_args(annotation))


def _is_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list


def add_settings_arguments(parser: argparse.ArgumentParser, registry: SettingsRegistry) -> None:
    """One ``--flag`` per settings field; values stay strings until pydantic validates them.

    A list setting takes several values after one flag, as the Go original's flag
    slices do (``--mirror-targets a b``), and the flag may be repeated; commas also
    separate values, except in regexes (``--registry-filters``).
    """
    groups: dict[type, argparse._ArgumentGroup] = {}
    for model, name, info in registry.fields():
        group = groups.get(model)
        if group is None:
            title = (model.__doc__ or model.__name__).strip().splitlines()[0]
            group = groups[model] = parser.add_argument_group(title)
        default = info.get_default(call_default_factory=True)
        shown = default if default not in (None, [], "") else "unset"
        help_text = f"{info.description or ''} [env {env_name(name)}; default {shown}]"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text,
                                  "metavar": name.upper().split("_")[-1]}
        if _is_bool(info.annotation):
            kwargs.update(nargs="?", const="true", metavar="true|false")
        elif _is_list(info.annotation):
            kwargs.update(nargs="+", action="extend")
        group.add_argument(flag_name(name), **kwargs)


def settings_values(namespace: argparse.Namespace, registry: SettingsRegistry) -> dict[str, Any]:
    """The values of the parsed ``namespace`` that are settings fields of ``registry``.

    Flags not given are absent (their default is ``argparse.SUPPRESS``), so the
    environment and the model's defaults apply to them.
    """
    fields = {name for _, name, _ in registry.fields()}
    return {key: value for key, value in vars(namespace).items() if key in fields}


def disabled_plugins(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """``--disable-plugin`` values (flag anywhere, repeatable, comma-separated) and the env."""
    environ = os.environ if environ is None else environ
    names: list[str] = []
    raw = [environ.get("SPEGEL_DISABLE_PLUGIN", "")]
    args = list(argv)
    for index, arg in enumerate(args):
        if arg == "--disable-plugin" and index + 1 < len(args):
            raw.append(args[index + 1])
        elif arg.startswith("--disable-plugin="):
            raw.append(arg.split("=", 1)[1])
    for item in raw:
        names.extend(part.strip() for part in item.split(",") if part.strip())
    return names
