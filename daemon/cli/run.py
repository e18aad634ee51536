"""``schedd run`` and ``schedd check-config``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from schedd.cli.base import EXIT_OK, EXIT_USAGE, _command_adder, _config_parent, _settings_env
from schedd.config import DEFAULT_PATH, load_config
from schedd.errors import ConfigError


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``run`` and ``check-config``."""
    add = _command_adder(subparsers)
    config = _config_parent()

    add(
        "run",
        cmd_run,
        "run the daemon",
        """
        Run the daemon in the foreground until SIGTERM or SIGINT, then drain: stop accepting
        submits, let running jobs finish for up to [drain] timeout, hand unfinished work back
        to the queue for other instances, and exit 0. SIGHUP reloads tokens, [limits] and the
        log level. Under systemd (Type=notify) it reports readiness, reloads, stopping and a
        health-checked watchdog; see docs/operations.md.

        Exit status: 0 after a clean stop, 1 when the store cannot be reached at start-up,
        2 for configuration errors.
        """,
        [
            "schedd run                          # ./sched.toml or built-in defaults",
            "schedd run -c /etc/schedd/sched.toml",
            "SCHEDD_REDIS__URL=redis://10.0.0.5:6379/0 schedd run -v",
        ],
        [config],
    )
    add(
        "check-config",
        cmd_check_config,
        "validate the configuration and plugins",
        """
        Load the configuration (file and SCHEDD_* environment overrides) and every plugin it
        enables, validating each plugin's [plugins.<name>] table. Prints "OK: ..." and exits 0,
        or prints every problem, one "$.path: message" line each, to stderr and exits 2.
        """,
        [
            "schedd check-config",
            "schedd check-config -c /etc/schedd/sched.toml",
            "SCHEDD_JOBS__ACK_TIMEOUT=2 schedd check-config -c sched.toml",
        ],
        [config],
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``schedd run``: hand over to the daemon."""
    from schedd.app import run_daemon

    if args.verbose:
        # An environment override wins over the file, and survives SIGHUP reloads.
        os.environ["SCHEDD_SCHEDD__LOG_LEVEL"] = "debug"
    return run_daemon(args.config)


def _config_source(path: Path | None) -> str:
    if path is not None:
        return str(path)
    return str(DEFAULT_PATH) if DEFAULT_PATH.is_file() else "built-in defaults"


def cmd_check_config(args: argparse.Namespace) -> int:
    """``schedd check-config``: load the configuration and the plugins; report every error."""
    from schedd.plugin_manager import PluginManager

    source = _config_source(args.config)
    try:
        config = load_config(args.config, _settings_env())
        plugins = PluginManager.load(config)
    except ConfigError as exc:
        count = len(exc.errors)
        print(
            f"schedd: {source}: {count} configuration error{'s' if count != 1 else ''}",
            file=sys.stderr,
        )
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    line = f"OK: {source}, plugins: {', '.join(plugins.names) or 'none'}"
    if config.env_overrides:
        line += f", environment: {', '.join(sorted(set(config.env_overrides.values())))}"
    print(line)
    return EXIT_OK
