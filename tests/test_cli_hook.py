"""The built-in commands of ``schedd`` come through the ``schedd_add_cli_commands`` hook, like a
plugin's, and ahead of every plugin's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from schedd.cli.commands import BuiltinCommands
from schedd.config import load_config
from schedd.hookspecs import hookimpl
from schedd.plugin_manager import PluginManager

BUILT_IN = [
    "run", "check-config", "nodes", "pools", "jobs", "job", "clients", "usage", "submit",
    "drain", "undrain", "cancel", "requeue", "node", "sim", "bench",
]


class AcmeCommands:
    @hookimpl
    def schedd_add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        subparsers.add_parser("acme-report")


def commands_of(manager: PluginManager) -> list[str]:
    subparsers = argparse.ArgumentParser().add_subparsers()
    manager.add_cli_commands(subparsers, builtin=BuiltinCommands())
    return list(subparsers.choices)


def test_the_hook_adds_the_built_in_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert commands_of(PluginManager.load(load_config(None, {}))) == BUILT_IN


def test_plugin_commands_follow_the_built_in_ones(tmp_path: Path) -> None:
    path = tmp_path / "sched.toml"
    path.write_text('[plugins]\nenabled = ["acme"]\n', encoding="utf-8")
    manager = PluginManager.load(load_config(path, {}), extra={"acme": AcmeCommands()})
    assert commands_of(manager) == [*BUILT_IN, "acme-report"]
