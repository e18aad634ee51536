"""What every command of the ``schedd`` command line shares: exit codes, the error that ends
a command, the help formatter, the common options and the argument types."""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from schedd.config import DEFAULT_PATH

DEFAULT_URL: Final = "ws://127.0.0.1:8765"
CONFIG_VARIABLE: Final = "SCHEDD_CONFIG"
URL_VARIABLE: Final = "SCHEDD_URL"
TOKEN_VARIABLE: Final = "SCHEDD_TOKEN"
#: Environment variables the CLI reads; they are not ``SCHEDD_<SECTION>__<KEY>`` settings.
CLIENT_VARIABLES: Final = frozenset({URL_VARIABLE, TOKEN_VARIABLE})

#: Seconds to open a connection and seconds to wait for a query's answer.
CONNECT_TIMEOUT: Final = 5.0
QUERY_TIMEOUT: Final = 15.0
CLIENT_NAME: Final = "schedd-cli"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

Command = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """Ends a command with one ``schedd: …`` line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ---------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)
        # argparse measures sub-command names without their indent; leave room for the longest
        # ("check-config") so its summary stays on the same line.
        self._action_max_length = 18


def _verbose_parent() -> argparse.ArgumentParser:
    # SUPPRESS: `schedd -v nodes` and `schedd nodes -v` both count, neither resets the other.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="debug logging (for run: overrides [schedd] log_level)",
    )
    return parent


_CONFIG_HELP: Final = (
    f"sched.toml to use (default: ${CONFIG_VARIABLE}, else ./{DEFAULT_PATH} if it exists, "
    "else built-in defaults)"
)


def _config_parent() -> argparse.ArgumentParser:
    # SUPPRESS, as for -v: `schedd -c X run` and `schedd run -c X` both work.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c", "--config", type=Path, metavar="PATH", default=argparse.SUPPRESS, help=_CONFIG_HELP
    )
    return parent


def _client_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help=f"daemon address, ws://host:port or tcp://host:port; repeat for fail-over "
        f"(default: ${URL_VARIABLE}, comma-separated, else {DEFAULT_URL})",
    )
    group.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get(TOKEN_VARIABLE) or None,
        help=f"token presented in hello (default: ${TOKEN_VARIABLE})",
    )
    return parent


def _json_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parent


def _command_adder(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> Callable[..., argparse.ArgumentParser]:
    """``add(name, func, summary, description, examples, parents)``: one built-in command, with
    the shared formatter, the ``-v`` option and its ``func`` bound by ``set_defaults``."""
    verbose = _verbose_parent()

    def add(
        name: str,
        func: Command,
        summary: str,
        description: str,
        examples: Sequence[str],
        parents: Sequence[argparse.ArgumentParser],
    ) -> argparse.ArgumentParser:
        command = subparsers.add_parser(
            name,
            help=summary,
            description=textwrap.dedent(description).strip(),
            epilog=_examples(*examples),
            formatter_class=_Formatter,
            parents=[verbose, *parents],
        )
        command.set_defaults(func=func)
        return command

    return add


def _json_object(option: str) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        value = _parse_json(text, option)
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
        return value

    return parse


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{what} is not valid JSON: {exc}") from None


def _positive_float() -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _positive_int() -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
        return value

    return parse


def _names(option: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"{option}: expected comma-separated names")
        return names

    return parse


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def _settings_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment minus the CLI's own variables, which are not settings."""
    return {name: value for name, value in env.items() if name not in CLIENT_VARIABLES}
