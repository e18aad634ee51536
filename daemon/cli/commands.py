"""The built-in commands of ``schedd``, added through the ``schedd_add_cli_commands`` hook like a
plugin's (:class:`BuiltinCommands`, registered by :func:`schedd.cli.main.build_parser`), group by
group in the order ``schedd --help`` lists them."""

from __future__ import annotations

import argparse
from typing import Any

import schedd.cli.admin as admin
import schedd.cli.node as node
import schedd.cli.queries as queries
import schedd.cli.run as run
import schedd.cli.submit as submit
import schedd.cli.tools as tools
from schedd.markers import hookimpl

__all__ = ["BuiltinCommands", "add_builtin_commands"]


def add_builtin_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add every built-in command to ``subparsers``."""
    for group in (run, queries, submit, admin, node, tools):
        group.add_commands(subparsers)


class BuiltinCommands:
    """The built-in commands as a hook implementation, first (``tryfirst``) so that they lead
    ``schedd --help`` and exist before any plugin's command."""

    @hookimpl(tryfirst=True)
    def schedd_add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        add_builtin_commands(subparsers)
