"""The ``schedd`` entry point: the top-level parser, whose commands all come through the
``schedd_add_cli_commands`` hook (the built-in ones from :mod:`schedd.cli.commands`), and the
dispatch of a command."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from schedd import __version__
from schedd.cli.base import (
    _CONFIG_HELP,
    CONFIG_VARIABLE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Command,
    CommandError,
    _env_path,
    _examples,
    _Formatter,
    _settings_env,
)
from schedd.cli.commands import BuiltinCommands, add_builtin_commands
from schedd.config import load_config
from schedd.logs import setup_logging
from schedd.protocol import PROTOCOL_VERSION

if TYPE_CHECKING:
    from schedd.plugin_manager import PluginManager

log = logging.getLogger("schedd.cli")


def build_parser(plugins: PluginManager | None = None) -> argparse.ArgumentParser:
    """The ``schedd`` parser with every built-in command, plus the commands of ``plugins``."""
    parser = argparse.ArgumentParser(
        prog="schedd",
        formatter_class=_Formatter,
        description="schedd: a scheduling daemon for fleets of worker nodes, and its tools.",
        epilog=_examples(
            "schedd run -c /etc/schedd/sched.toml",
            "schedd check-config -c sched.toml",
            "schedd node --pool demo &",
            'schedd submit --pool demo \'{"text": "hi"}\'',
            "schedd nodes --url ws://10.0.0.5:8765",
            "schedd <command> --help",
        )
        + "\n\nexit codes: 0 ok, 1 job failed/canceled/timed out, 2 usage, configuration or "
        "connection error",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument(
        "--version", action="version",
        version=f"schedd {__version__} (protocol {PROTOCOL_VERSION})",
        help="print the package version and the wire protocol version it speaks, and exit",
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        default=_env_path(CONFIG_VARIABLE),
        help=_CONFIG_HELP + "; for run, check-config and plugin commands",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    if plugins is None:
        add_builtin_commands(subparsers)
    else:
        try:
            plugins.add_cli_commands(subparsers, builtin=BuiltinCommands())
        except Exception as exc:  # a broken plugin must not take the built-in commands down
            log.warning("plugin commands unavailable: %s: %s", type(exc).__name__, exc)
        if "run" not in subparsers.choices:
            add_builtin_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``schedd`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    return dispatch(build_parser(_plugins_for_commands(args)), args)


def dispatch(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen command; returns the exit code."""
    try:
        args = parser.parse_args(argv)
        func: Command | None = getattr(args, "func", None)
        if func is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        if args.command not in ("run", "node"):
            setup_logging("debug" if args.verbose else "warning", "text")
        return func(args)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return _exit_code(exc)
    except CommandError as exc:
        print(f"schedd: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("schedd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return EXIT_FAILED


def _plugins_for_commands(argv: Sequence[str]) -> PluginManager | None:
    """The plugins of the configuration ``argv`` names, to add their commands; ``None`` if that
    configuration does not load (``run`` and ``check-config`` report why)."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("-c", "--config", type=Path, default=_env_path(CONFIG_VARIABLE))
    known, _rest = pre.parse_known_args(argv)
    try:
        from schedd.plugin_manager import PluginManager

        return PluginManager.load(load_config(known.config, _settings_env()))
    except Exception as exc:
        log.debug("no plugin commands: %s", exc)
        return None
