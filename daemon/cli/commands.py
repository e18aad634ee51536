"""The built-in commands of ``schedd``, added through the ``schedd_add_cli_commands`` hook like a
plugin's (:meth:`schedd.core_hooks.CoreHooks.schedd_add_cli_commands`), group by group in the order
``schedd --help`` lists them."""

from __future__ import annotations

import argparse
from typing import Any

from schedd.cli import node, queries, run, submit, tools

__all__ = ["add_builtin_commands"]


def add_builtin_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add every built-in command to ``subparsers``."""
    for group in (run, queries, submit, node, tools):
        group.add_commands(subparsers)
