"""``spegel``: run a node, list plugins, run the demo, print the version."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from typing import NoReturn

from spegel_core import __version__
from spegel_core.cli.options import add_settings_arguments, disabled_plugins, settings_values
from spegel_core.config import LOG_LEVELS, load_config, log_level_name
from spegel_core.errors import ConfigError, PluginError
from spegel_core.plugin_manager import PluginManager, create_plugin_manager

log = logging.getLogger(__name__)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag, exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print the usage error on one line and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` on a command without settings (the Go original has it on every one)."""
    parser.add_argument("--log-level", dest="log_level", default=argparse.SUPPRESS,
                        metavar="LEVEL",
                        help=f"Log level: {', '.join(LOG_LEVELS)} (or WARN) "
                             "[env SPEGEL_LOG_LEVEL; default INFO].")


def build_parser(pm: PluginManager) -> tuple[argparse.ArgumentParser, object]:
    """The ``spegel`` command line, with every plugin's settings as flags of ``registry``.

    :returns: the parser and the settings registry its ``registry`` command reads.
    """
    registry = pm.settings_registry()
    parser = OneLineParser(
        prog="spegel", description="Cluster-local peer-to-peer OCI registry mirror."
    )
    parser.add_argument("--version", action="version", version=f"spegel {__version__}")
    parser.add_argument("--disable-plugin", action="append", default=[], metavar="NAME",
                        help="Do not load this plugin (repeatable; env SPEGEL_DISABLE_PLUGIN).")
    add_log_level_argument(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    registry_cmd = commands.add_parser("registry", help="Run the mirror on this node.")
    add_settings_arguments(registry_cmd, registry)

    plugins_cmd = commands.add_parser("plugins", help="List registered plugins and their hooks.")
    plugins_cmd.add_argument("--json", action="store_true", help="Print JSON.")
    add_log_level_argument(plugins_cmd)

    version_cmd = commands.add_parser("version", help="Print the version.")
    version_cmd.add_argument("--format", choices=("text", "json"), default="text",
                             help="Output format [default text].")
    add_log_level_argument(version_cmd)

    demo_cmd = commands.add_parser(
        "demo", help="Build a sample image and pull it through local nodes."
    )
    from spegel_core.cli.demo import add_demo_arguments

    add_demo_arguments(demo_cmd)
    add_log_level_argument(demo_cmd)
    from spegel_core.cli.configuration import add_configuration_commands

    for command in add_configuration_commands(commands):
        add_log_level_argument(command)
    return parser, registry


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spegel`` command.

    :param argv: the arguments (default: ``sys.argv[1:]``).
    :returns: the exit status: 0, 2 for a configuration or plugin error (one line
        on stderr), 130 on Ctrl-C.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        pm = create_plugin_manager(disabled=disabled_plugins(args_list))
        parser, registry = build_parser(pm)
    except PluginError as exc:
        print(f"spegel: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    try:
        if args.command != "registry":
            _configure_command_logging(getattr(args, "log_level", None))
        if args.command == "version":
            return cmd_version(as_json=args.format == "json")
        if args.command == "plugins":
            return cmd_plugins(pm, as_json=args.json)
        if args.command == "demo":
            from spegel_core.cli.demo import run_demo

            return run_demo(args)
        if args.command in ("configuration", "cleanup", "cleanup-wait"):
            from spegel_core.cli.configuration import run_configuration_command

            return run_configuration_command(args)
        config = load_config(registry, settings_values(args, registry))  # type: ignore[arg-type]
        return cmd_registry(pm, config)
    except (ConfigError, PluginError) as exc:
        print(f"spegel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _configure_command_logging(flag: str | None) -> None:
    """Logging for commands without settings: ``--log-level``, else ``SPEGEL_LOG_LEVEL``.

    A handler is only added when there is none (a test runner's capture stays).
    """
    value = flag if flag is not None else os.environ.get("SPEGEL_LOG_LEVEL", "INFO")
    try:
        level = log_level_name(value)
    except ValueError as exc:
        raise ConfigError("--log-level / SPEGEL_LOG_LEVEL", str(exc)) from None
    root = logging.getLogger()
    root.setLevel(level)
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, level=level,
                            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def version_info() -> dict[str, str]:
    """What ``spegel version`` prints."""
    return {"version": __version__, "python": platform.python_version(),
            "platform": f"{sys.platform}/{platform.machine()}"}


def cmd_version(*, as_json: bool) -> int:
    """``spegel version``: print the version, as text or JSON."""
    info = version_info()
    if as_json:
        print(json.dumps(info))
    else:
        print(f"spegel {info['version']} (python {info['python']}, {info['platform']})")
    return 0


def cmd_plugins(pm: PluginManager, *, as_json: bool) -> int:
    """``spegel plugins``: list the registered plugins and their hooks, as a table or JSON."""
    infos = pm.plugin_infos()
    if as_json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return 0
    width = max((len(info.name) for info in infos), default=4)
    for info in infos:
        origin = "builtin" if info.source == "builtin" else f"{info.source} {info.version}"
        print(f"{info.name:<{width}}  {origin:<20}  {', '.join(info.hooks)}")
    return 0


def cmd_registry(pm: PluginManager, config: object) -> int:
    """``spegel registry``: run the mirror until it is stopped.

    :param config: the validated :class:`~spegel_core.config.SpegelConfig`.
    :returns: the server's exit status.
    """
    from spegel_core.config import SpegelConfig
    from spegel_core.logs import configure_logging
    from spegel_core.mirror.app import create_app, metrics_app_of
    from spegel_core.server.run import serve

    assert isinstance(config, SpegelConfig)
    configure_logging(config.core.log_level, config.core.log_format)
    from spegel_core.compat import compat_notes

    for note in compat_notes(config):
        log.warning("%s", note)
    app = create_app(config, pm)
    metrics_app = metrics_app_of(app)
    log.info("spegel %s mirror on %s", __version__, config.core.registry_addr)
    return serve(app, config.core.registry_addr, drain_timeout=config.core.drain_timeout,
                 metrics=(metrics_app, config.core.metrics_addr) if metrics_app else None)


if __name__ == "__main__":
    sys.exit(main())
