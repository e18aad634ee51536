"""The ``schedd`` command line: run the daemon, check its configuration, talk to it.

Commands::

    schedd run            serve (systemd-ready: see docs/operations.md)
    schedd check-config   load sched.toml and the plugins it enables; print every error
    schedd nodes          connected nodes            \\
    schedd pools          pools and free slots        |  queries over the wire protocol,
    schedd jobs           jobs per state, exclusions  |  like any client (``--url``, ``--token``,
    schedd job ID         one job's status            |  ``--json`` for machine output)
    schedd submit JSON    submit a job, wait for done |
    schedd node --pool P  a demo node that echoes    /

Rules this package owns (one module per command group: :mod:`~schedd.cli.run`,
:mod:`~schedd.cli.queries`, :mod:`~schedd.cli.submit`, :mod:`~schedd.cli.node`,
:mod:`~schedd.cli.tools`; :mod:`~schedd.cli.main` builds the parser and dispatches):

* **Exit codes.** 0 success; 1 the operation ran but did not succeed (a job that failed, was
  cancelled or timed out, or a wait that ran out); 2 usage, configuration or connection errors,
  with one ``schedd: …`` line on stderr. ``run`` returns what the daemon returns.
* **stdout is for results** (tables, JSON); messages and logs go to stderr.
* **Commands come through the hook.** The built-in commands register through the same
  ``schedd_add_cli_commands`` hook as plugins' (:mod:`schedd.cli.commands`, called by the core's
  hook implementation first, so they come first in ``--help``).
* **The daemon is reached through** :func:`schedd.cli.client._run_client`: every command that
  talks to the daemon looks it up there when it runs (tests replace it with a fake client).
* **Plugin commands.** Plugins add sub-commands through the ``schedd_add_cli_commands`` hook, with
  the ``set_defaults`` convention every built-in command follows too::

      @hookimpl
      def schedd_add_cli_commands(subparsers):
          parser = subparsers.add_parser("acme-report", help="print the acme pool report")
          parser.add_argument("--pool")
          parser.set_defaults(func=run_report)

      def run_report(args: argparse.Namespace) -> int:  # returns the exit code
          ...

  ``func`` receives the parsed namespace (which also holds the global ``verbose`` count and
  ``config`` path) and returns the exit code. To build the parser the CLI loads the
  configuration (``-c``, ``$SCHEDD_CONFIG``, ``./sched.toml`` or the defaults) and its enabled
  plugins; when that fails the built-in commands still work, and ``schedd check-config`` says
  why.
* **Configuration for ``run`` and ``check-config``** comes from ``-c PATH``, else
  ``$SCHEDD_CONFIG``, else ``./sched.toml`` when it exists, else the built-in defaults.
  ``$SCHEDD_URL`` and ``$SCHEDD_TOKEN`` are the client commands' defaults, not settings.
"""

from __future__ import annotations

from schedd.cli.base import (
    CLIENT_VARIABLES,
    CONFIG_VARIABLE,
    DEFAULT_URL,
    TOKEN_VARIABLE,
    URL_VARIABLE,
    CommandError,
)
from schedd.cli.client import _connect_failure as _connect_failure
from schedd.cli.client import _raise_command_error as _raise_command_error
from schedd.cli.client import _urls as _urls
from schedd.cli.main import _plugins_for_commands as _plugins_for_commands
from schedd.cli.main import build_parser, dispatch, main
from schedd.cli.queries import cmd_job, cmd_jobs, cmd_nodes, cmd_pools

__all__ = [
    "CLIENT_VARIABLES",
    "CONFIG_VARIABLE",
    "DEFAULT_URL",
    "TOKEN_VARIABLE",
    "URL_VARIABLE",
    "CommandError",
    "build_parser",
    "cmd_job",
    "cmd_jobs",
    "cmd_nodes",
    "cmd_pools",
    "dispatch",
    "main",
]
