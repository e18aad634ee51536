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

Rules this module owns:

* **Exit codes.** 0 success; 1 the operation ran but did not succeed (a job that failed, was
  cancelled or timed out, or a wait that ran out); 2 usage, configuration or connection errors,
  with one ``schedd: …`` line on stderr. ``run`` returns what the daemon returns.
* **stdout is for results** (tables, JSON); messages and logs go to stderr.
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

import argparse
import json
import logging
import os
import signal
import socket
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import attrs
import trio

from schedd.config import DEFAULT_PATH, load_config
from schedd.errors import ConfigError
from schedd.logs import setup_logging
from schedd.runtime import tune_gc

if TYPE_CHECKING:
    from schedd.plugin_manager import PluginManager
    from schedd.protocol import Job
    from schedd.sdk.client import Client
    from schedd.sdk.node import JobContext

__all__ = [
    "CLIENT_VARIABLES",
    "CONFIG_VARIABLE",
    "DEFAULT_URL",
    "TOKEN_VARIABLE",
    "URL_VARIABLE",
    "build_parser",
    "dispatch",
    "main",
]

log = logging.getLogger(__name__)

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

T = TypeVar("T")
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


def build_parser(plugins: PluginManager | None = None) -> argparse.ArgumentParser:
    """The ``schedd`` parser with every built-in command, plus the commands of ``plugins``."""
    verbose = _verbose_parent()
    config = _config_parent()
    client = _client_parent()
    as_json = _json_parent()
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
        "-c",
        "--config",
        type=Path,
        metavar="PATH",
        default=_env_path(CONFIG_VARIABLE),
        help=_CONFIG_HELP + "; for run, check-config and plugin commands",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

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
    add(
        "nodes",
        cmd_nodes,
        "list nodes",
        """
        List every registered node of the namespace (from Redis, so every instance shows the
        same): state, pools, used/capacity slots, load, epoch, owning instance and the age of
        its last heartbeat.
        """,
        [
            "schedd nodes",
            "schedd nodes --url ws://10.0.0.5:8765 --token $TOKEN",
            "schedd nodes --json",
        ],
        [client, as_json],
    )
    add(
        "pools",
        cmd_pools,
        "list pools",
        """
        List every pool: its member nodes with their free slots, the pool's free slots and the
        number of jobs queued for it.
        """,
        ["schedd pools", "schedd pools --json | jq '.pools[] | select(.queued > 0)'"],
        [client, as_json],
    )
    add(
        "jobs",
        cmd_jobs,
        "count jobs per state",
        """
        Show how many jobs are in each state (plus lifetime totals), how many times nodes were
        excluded from pools and why, and the live daemon instances.
        """,
        ["schedd jobs", "schedd jobs --json"],
        [client, as_json],
    )
    job = add(
        "job",
        cmd_job,
        "show one job",
        """
        Show a job's state, attempt, node, pools, timings and the reason of its last retry.
        Only the principal (token) that submitted a job may see it.
        """,
        ["schedd job j-42", "schedd job j-42 --json"],
        [client, as_json],
    )
    job.add_argument("job_id", metavar="JOB_ID", help="the job's id")
    submit = add(
        "submit",
        cmd_submit,
        "submit a job and wait for its result",
        """
        Submit PAYLOAD_JSON (any JSON value; "-" reads it from stdin) and wait for the job's
        done message, which is printed as JSON on stdout. Exits 0 when the job succeeded,
        1 when it failed, was cancelled, timed out or was not done within --timeout, and 2 when
        the submit was refused or the daemon could not be reached.

        Resubmitting the same --job-id does not create a second job: it waits for (or returns)
        the existing job's result.
        """,
        [
            'schedd submit --pool demo \'{"text": "hello"}\'',
            'schedd submit --requirements \'{"src": "zh", "dst": "en"}\' \'{"audio": "..."}\'',
            "schedd submit --pool demo --job-id order-17 --timeout 300 '{\"n\": 17}'",
            "echo '{\"n\": 1}' | schedd submit --pool demo --no-wait -",
        ],
        [client],
    )
    submit.add_argument("payload", metavar="PAYLOAD_JSON", help='the job\'s payload ("-": stdin)')
    submit.add_argument(
        "--pool",
        dest="pools",
        action="append",
        default=[],
        metavar="POOL",
        help="a pool the job may run in; repeat, best first",
    )
    submit.add_argument(
        "--requirements",
        metavar="JSON",
        type=_json_object("--requirements"),
        help="a JSON object the daemon's plugins turn into pools",
    )
    submit.add_argument("--job-id", metavar="ID", help="idempotency key (default: generated)")
    submit.add_argument(
        "--session", dest="session_id", metavar="ID", help="session: prefer the previous node"
    )
    submit.add_argument(
        "--priority", type=int, default=0, help="-1000..1000, higher first (default: 0)"
    )
    submit.add_argument(
        "--timeout",
        type=_positive_float(),
        default=60.0,
        metavar="SECONDS",
        help="give up waiting after this many seconds in all (default: 60)",
    )
    submit.add_argument(
        "--no-wait", action="store_true", help="print the accepted job id and exit at once"
    )
    node = add(
        "node",
        cmd_node,
        "run a demo node that echoes its payloads",
        """
        Connect as a node, register in the given pools and answer every job with
        {"echo": <payload>, "node": <node id>}, logging each job. Runs until Ctrl-C (or
        SIGTERM) and exits 0. Useful to try a daemon end to end and as a template for real nodes
        (see schedd.sdk.node).
        """,
        [
            "schedd node --pool demo",
            "schedd node --pool zh>en --pool en>zh --capacity 4 --node-id box-7",
            "schedd node --pool demo --url tcp://10.0.0.5:8766 --token $NODE_TOKEN",
        ],
        [client],
    )
    node.add_argument(
        "--pool",
        dest="pools",
        action="append",
        required=True,
        metavar="POOL",
        help="a pool to serve; repeat for several",
    )
    node.add_argument("--capacity", type=_positive_int(), default=1, help="job slots (default: 1)")
    node.add_argument("--node-id", metavar="ID", help="stable node id (default: generated)")
    node.add_argument("--name", help="a name for logs (default: the host name)")
    sim = add(
        "sim",
        cmd_sim,
        "simulate a fleet of nodes",
        """
        Connect N simulated nodes from this one process (lean protocol peers, not the SDK's
        Node: 10,000 fit on a small machine). Each registers with the given pools or language
        capabilities, heartbeats, accepts every job and answers it after the simulated duration.
        Prints a line of counters and rates every --stats-every seconds, to stderr. Runs until
        Ctrl-C (or --for seconds) and exits 0.
        """,
        [
            "schedd sim --nodes 1000 --pools demo",
            "schedd sim --nodes 10000 --url tcp://127.0.0.1:8766 --pools a,b --capacity 4",
            "schedd sim --nodes 50 --langs zh,en --duration exp:0.2 --fail-rate 0.01",
            "schedd sim --nodes 100 --pools demo --disconnect-rate 0.01 --for 60",
        ],
        [client],
    )
    sim.add_argument("--nodes", type=_positive_int(), default=100, help="nodes (default: 100)")
    sim.add_argument("--capacity", type=_positive_int(), default=1,
                     help="job slots per node (default: 1)")
    sim.add_argument("--pools", type=_names("--pools"), default=[], metavar="A,B",
                     help="pool keys every node declares")
    sim.add_argument("--langs", type=_names("--langs"), default=[], metavar="ZH,EN",
                     help="languages every node serves for asr, semantic and tts "
                     "(capabilities for the langset plugin)")
    sim.add_argument("--duration", type=_duration, default="fixed:0", metavar="SPEC",
                     help="job run time in seconds: fixed:S, uniform:A,B or exp:MEAN "
                     "(default: fixed:0)")
    sim.add_argument("--fail-rate", type=_fraction, default=0.0, metavar="F",
                     help="fraction of jobs answered with ok: false (default: 0)")
    sim.add_argument("--disconnect-rate", type=_fraction, default=0.0, metavar="F",
                     help="per node and second, probability of dropping the connection and "
                     "reconnecting (default: 0)")
    sim.add_argument("--prefix", default="sim", help="node id prefix (default: sim)")
    sim.add_argument("--stats-every", type=_positive_float(), default=5.0, metavar="SECONDS",
                     help="seconds between stats lines (default: 5)")
    sim.add_argument("--for", dest="run_for", type=_positive_float(), metavar="SECONDS",
                     help="stop after this many seconds (default: run until Ctrl-C)")
    bench = add(
        "bench",
        cmd_bench,
        "measure latency, throughput and scale",
        """
        Start a throw-away redis-server and a `schedd run` daemon on free ports (one fresh
        pair per scenario), drive them with simulated nodes and clients over the real transport
        and print a table of the results (latency percentiles, throughput, daemon CPU and
        memory, Redis script cost, failover times). Progress goes to stderr, the table to
        stdout, every number to the JSON file. Scenarios: S1 dispatch latency, S2 throughput,
        S3 heartbeat scale, S4 script cost, S5 failover, CHAOS (3 instances, nodes and one
        instance killed; every job must end once) (docs/benchmarks.md). --scale tiny runs each
        in seconds (the CI smoke test); full takes several minutes. Ctrl-C, SIGTERM or SIGHUP
        stop the run and every process it started (exit 128 + the signal's number); the JSON
        file keeps the scenarios that finished.
        """,
        [
            "schedd bench",
            "schedd bench --scenarios S1,S4 --scale tiny",
            "schedd bench --transport tcp --json results.json",
            "schedd bench --scenarios S1,S2 --url ws://127.0.0.1:8765   # an existing daemon",
            "schedd bench --scenarios S3 --set nodes.liveness_refresh=1 --set "
            "nodes.heartbeat_flush=0.05",
            "schedd bench --scenarios S1 --probe-during   # the host's CPU stalls during S1",
        ],
        [],
    )
    bench.add_argument("--scenarios", type=_scenarios,
                       default=["S1", "S2", "S3", "S4", "S5", "CHAOS"],
                       metavar="S1,S2,...",
                       help="scenarios to run (default: all but SOAK, which runs when named)")
    bench.add_argument("--scale", choices=("tiny", "full"), default="full",
                       help="tiny: seconds per scenario (CI smoke); full: the documented "
                       "measurement (default)")
    bench.add_argument("--transport", choices=("ws", "tcp"), default="ws",
                       help="transport of the simulated nodes and clients (default: ws)")
    bench.add_argument("--url", metavar="URL",
                       help="use this running daemon instead of starting one (S1, S2, S5; "
                       "S3 needs its own daemon to measure it)")
    bench.add_argument("--json", type=Path, metavar="FILE",
                       help="write the results here (default: bench-results/bench-<time>.json)")
    bench.add_argument("--set", type=_bench_setting, action="append", default=[],
                       dest="settings", metavar="SECTION.KEY=VALUE",
                       help="a setting of the daemons the bench starts (S1, S2, S3, S5; "
                       "repeatable; VALUE in TOML), e.g. nodes.heartbeat_flush=0.05")
    bench.add_argument("--probe-during", action="store_true",
                       help="also run the host probe beside every scenario and report the "
                       "CPU stalls the host caused during it (it takes ~2.5%% of one CPU at "
                       "real-time priority where allowed, so it is off by default; the probe "
                       "always runs before the scenarios and again after them)")

    if plugins is not None:
        try:
            plugins.add_cli_commands(subparsers)
        except Exception as exc:  # a broken plugin must not take the built-in commands down
            log.warning("plugin commands unavailable: %s: %s", type(exc).__name__, exc)
    return parser


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


def _duration(text: str) -> str:
    from schedd.sim import parse_duration

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _bench_setting(text: str) -> tuple[str, str, str]:
    from schedd.bench import parse_setting

    try:
        return parse_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scenarios(text: str) -> list[str]:
    from schedd.bench import SCENARIOS

    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; choose from {','.join(SCENARIOS)}"
        )
    return names


def _env_path(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


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


def _settings_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment minus the CLI's own variables, which are not settings."""
    return {name: value for name, value in env.items() if name not in CLIENT_VARIABLES}


# ---------------------------------------------------------------------------------------------
# run, check-config
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Talking to the daemon
# ---------------------------------------------------------------------------------------------


def _urls(args: argparse.Namespace) -> list[str]:
    if args.url:
        return list(args.url)
    from_env = [url.strip() for url in os.environ.get(URL_VARIABLE, "").split(",") if url.strip()]
    return from_env or [DEFAULT_URL]


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, and the members of any group on the way."""
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        nested = getattr(current, "errors", None)
        if isinstance(nested, list | tuple):
            pending.extend(item for item in nested if isinstance(item, BaseException))
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)


_HINT: Final = "(is the daemon running? start it with: schedd run)"


def _connect_failure(urls: Sequence[str], exc: BaseException) -> str:
    """``cannot connect to <urls>: <reason>``, naming the OS-level reason when there is one."""
    where = ", ".join(urls)
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return f"cannot connect to {where}: connection refused {_HINT}"
        if isinstance(cause, socket.gaierror):
            return f"cannot connect to {where}: unknown host ({cause.strerror or cause})"
        if isinstance(cause, TimeoutError | trio.TooSlowError):
            return f"cannot connect to {where}: timed out {_HINT}"
        if isinstance(cause, OSError) and cause.strerror:
            return f"cannot connect to {where}: {cause.strerror[:1].lower()}{cause.strerror[1:]}"
    reason = str(exc) or type(exc).__name__
    for url in urls:  # the SDK names the URL too
        reason = reason.removeprefix(f"{url}: ")
    return f"cannot connect to {where}: {reason}"


def _request_failure(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", None) or str(exc)
    return f"{code}: {message}" if code else message


def _run_client(
    args: argparse.Namespace,
    body: Callable[[Client], Awaitable[T]],
    *,
    reconnect: bool = False,
) -> T:
    """Connect to the daemon, run ``body`` with the client, map failures to :class:`CommandError`.

    Connection failures and refused requests are exit status 2. The first connection is tried
    once per URL either way; ``reconnect`` lets a long wait survive a daemon restart.
    """
    from schedd.sdk.client import Client

    urls = _urls(args)
    connected = False

    async def session() -> T:
        nonlocal connected
        async with Client.connect(
            urls,
            token=args.token,
            name=CLIENT_NAME,
            connect_timeout=CONNECT_TIMEOUT,
            reconnect=reconnect,
        ) as client:
            connected = True
            return await body(client)

    try:
        return trio.run(session)
    except BaseException as exc:
        _raise_command_error(exc, urls, connected=connected)


def _raise_command_error(exc: BaseException, urls: Sequence[str], *, connected: bool) -> NoReturn:
    """Turn what ended a conversation with the daemon into a :class:`CommandError` (exit 2).

    ``connected``: whether the connection was established (a refusal before that is a refused
    ``hello``). Ctrl-C becomes :class:`KeyboardInterrupt`; anything unexpected is re-raised.
    """
    from schedd.sdk.client import RequestFailed
    from schedd.sdk.connect import ConnectFailed

    where = ", ".join(urls)
    leaves = list(_leaves(exc))
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        raise KeyboardInterrupt from None
    for leaf in leaves:
        if isinstance(leaf, CommandError):
            raise leaf from None
        if isinstance(leaf, ConnectFailed):
            raise CommandError(_connect_failure(urls, leaf)) from None
        if isinstance(leaf, RequestFailed) and not connected:
            hint = " (check --token or $SCHEDD_TOKEN)" if leaf.code == "E_AUTH" else ""
            raise CommandError(
                f"cannot connect to {where}: hello refused: {_request_failure(leaf)}{hint}"
            ) from None
        if isinstance(leaf, RequestFailed):
            raise CommandError(_request_failure(leaf)) from None
        if isinstance(leaf, trio.TooSlowError):
            raise CommandError(f"no answer from {where} in time") from None
        if isinstance(leaf, OSError | trio.BrokenResourceError | trio.ClosedResourceError):
            raise CommandError(f"connection to {where} lost: {leaf}") from None
        if isinstance(leaf, ValueError):  # a bad URL, or an argument the protocol refuses
            raise CommandError(str(leaf)) from None
    if not connected:
        # Whatever broke the connection attempt, the answer to the user is the same; -v shows
        # the traceback.
        error = next((leaf for leaf in leaves if isinstance(leaf, Exception)), None)
        if error is not None:
            log.debug("connection attempt failed", exc_info=error)
            raise CommandError(
                f"cannot connect to {where}: {type(error).__name__}: {error}"
            ) from None
    raise exc


def _query(args: argparse.Namespace, what: str) -> dict[str, Any]:
    async def body(client: Client) -> dict[str, Any]:
        with trio.fail_after(QUERY_TIMEOUT):
            return await client.query(what)

    return _run_client(args, body)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    return "\n".join(line.rstrip() for line in lines)


def _age(ms: object, now_ms: float) -> str:
    if not isinstance(ms, int | float) or ms <= 0:
        return "-"
    return f"{max(0.0, (now_ms - ms) / 1000):.1f}s ago"


def _in(ms: object, now_ms: float) -> str:
    if not isinstance(ms, int | float) or ms <= 0:
        return "-"
    seconds = (ms - now_ms) / 1000
    return f"in {seconds:.1f}s" if seconds >= 0 else f"{-seconds:.1f}s ago (expired)"


def _stamp(ms: object) -> str:
    if not isinstance(ms, int | float) or ms <= 0:
        return "-"
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000))
    return f"{seconds}.{int(ms) % 1000:03d}Z"


def _list(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value) or "-"
    return "-" if value in (None, "") else str(value)


def cmd_nodes(args: argparse.Namespace) -> int:
    """``schedd nodes``."""
    data = _query(args, "nodes")
    if args.json:
        _print_json(data)
        return EXIT_OK
    nodes: list[dict[str, Any]] = data.get("nodes", [])
    if not nodes:
        print("no nodes")
        return EXIT_OK
    now_ms = time.time() * 1000
    rows = [
        (
            node.get("node_id", "?"),
            node.get("state", "?"),
            _list(node.get("pools")),
            f"{node.get('used', 0)}/{node.get('capacity', 0)}",
            f"{float(node.get('load') or 0):.2f}",
            node.get("epoch", "-"),
            node.get("owner") or "-",
            _age(node.get("last_heartbeat_ms"), now_ms),
        )
        for node in nodes
    ]
    headers = ("NODE", "STATE", "POOLS", "USED", "LOAD", "EPOCH", "OWNER", "LAST HEARTBEAT")
    print(_table(headers, rows))
    return EXIT_OK


def cmd_pools(args: argparse.Namespace) -> int:
    """``schedd pools``."""
    data = _query(args, "pools")
    if args.json:
        _print_json(data)
        return EXIT_OK
    pools: list[dict[str, Any]] = data.get("pools", [])
    if not pools:
        print("no pools")
        return EXIT_OK
    rows = []
    for pool in pools:
        members: dict[str, Any] = pool.get("members") or {}
        rows.append(
            (
                pool.get("pool", "?"),
                len(members),
                pool.get("free_slots", 0),
                pool.get("queued", 0),
                " ".join(f"{node}:{free}" for node, free in members.items()) or "-",
            )
        )
    print(_table(("POOL", "NODES", "FREE", "QUEUED", "MEMBERS (node:free)"), rows))
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """``schedd jobs``."""
    data = _query(args, "stats")
    if args.json:
        _print_json(data)
        return EXIT_OK
    counts: dict[str, Any] = data.get("counts") or {}
    current = [(state, n) for state, n in counts.items() if not state.startswith("total:")]
    totals = [
        (state[len("total:") :], n) for state, n in counts.items() if state.startswith("total:")
    ]
    sections = [_table(("STATE", "JOBS"), current) if current else "no jobs"]
    if totals:
        sections.append(_table(("TOTAL", "SINCE START"), totals))
    exclusions: dict[str, Any] = data.get("exclusions") or {}
    sections.append(
        _table(("EXCLUDED BECAUSE", "TIMES"), list(exclusions.items()))
        if exclusions
        else "no exclusions"
    )
    instances: dict[str, Any] = data.get("instances") or {}
    now_ms = time.time() * 1000
    sections.append(
        _table(
            ("INSTANCE", "PRESENCE EXPIRES"), [(i, _in(ms, now_ms)) for i, ms in instances.items()]
        )
        if instances
        else "no instances"
    )
    print("\n\n".join(sections))
    return EXIT_OK


def cmd_job(args: argparse.Namespace) -> int:
    """``schedd job ID``."""

    async def body(client: Client) -> Job:
        with trio.fail_after(QUERY_TIMEOUT):
            return await client.status(args.job_id)

    job = _run_client(args, body)
    snapshot = attrs.asdict(job)
    snapshot.pop("ref", None)
    if args.json:
        _print_json(snapshot)
        return EXIT_OK
    info: dict[str, Any] = dict(snapshot.pop("info") or {})
    attempt = f"{job.attempt}"
    if isinstance(info.get("max_attempts"), int) and info["max_attempts"]:
        attempt += f" of {info.pop('max_attempts')}"
    rows: list[tuple[str, object]] = [
        ("job", job.job_id),
        ("state", job.state),
        ("attempt", attempt),
        ("node", job.node or "-"),
    ]
    for key, value in info.items():
        if key == "timings" and isinstance(value, dict):
            rows.extend((name, _stamp(ms)) for name, ms in value.items())
        elif isinstance(value, list | tuple):
            rows.append((key, _list(value)))
        elif isinstance(value, dict):
            rows.append((key, json.dumps(value, ensure_ascii=False)))
        else:
            rows.append((key, "-" if value in (None, "") else value))
    width = max(len(key) for key, _value in rows)
    print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))
    return EXIT_OK


def _read_payload(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"PAYLOAD_JSON is not valid JSON: {exc}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    """``schedd submit``: print the done message; exit 0 when the job succeeded."""
    from schedd.protocol import encode

    payload = _read_payload(args.payload)
    if not args.pools and args.requirements is None:
        raise CommandError("submit: name where the job may run: --pool POOL or --requirements JSON")

    async def body(client: Client) -> int:
        accepted_id: str | None = None
        with trio.move_on_after(args.timeout):
            handle = await client.submit(
                payload,
                pools=tuple(args.pools),
                requirements=args.requirements,
                job_id=args.job_id,
                session_id=args.session_id,
                priority=args.priority,
            )
            accepted_id = handle.job_id
            log.info(
                "job %s accepted: %s%s",
                handle.job_id,
                handle.state,
                " (duplicate: the existing job)" if handle.duplicate else "",
            )
            if args.no_wait:
                print(handle.job_id)
                return EXIT_OK
            done = await handle.result()
            print(encode(done).decode())
            return EXIT_OK if done.ok else EXIT_FAILED
        if accepted_id is None:
            raise CommandError(f"submit not answered within {args.timeout:g} s")
        print(
            f"schedd: job {accepted_id} not done within {args.timeout:g} s; "
            f"see it with: schedd job {accepted_id}",
            file=sys.stderr,
        )
        return EXIT_FAILED

    return _run_client(args, body, reconnect=not args.no_wait)


# ---------------------------------------------------------------------------------------------
# The demo node
# ---------------------------------------------------------------------------------------------


def cmd_node(args: argparse.Namespace) -> int:
    """``schedd node``: echo every payload until Ctrl-C or SIGTERM."""
    from schedd.sdk.node import Node

    setup_logging("debug" if args.verbose else "info", "text")
    urls = _urls(args)
    node_log = logging.getLogger("schedd.node")
    node_id: str = args.node_id or f"{socket.gethostname()}-{os.getpid()}"
    registered = False

    async def echo(job: JobContext) -> dict[str, Any]:
        node_log.info("job %s attempt %s: echoing %s", job.job_id, job.attempt, _short(job.payload))
        return {"echo": job.payload, "node": node_id}

    async def serve() -> None:
        nonlocal registered
        # The node reconnects forever once it runs (what a worker should do); a daemon that is
        # not there at all is more likely a wrong --url, so say so at once instead.
        await _check_reachable(urls)
        node = Node(
            urls,
            echo,
            pools=tuple(args.pools),
            capacity=args.capacity,
            node_id=node_id,
            token=args.token,
            name=args.name,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope, node_log)
            await nursery.start(node.run)
            registered = True
            node_log.info(
                "node %s serving %s with %d slot(s) via %s; Ctrl-C stops it",
                node_id,
                ", ".join(args.pools),
                args.capacity,
                ", ".join(urls),
            )

    try:
        trio.run(serve)
    except BaseException as exc:
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc)):
            return EXIT_OK  # Ctrl-C before the signal handler was installed
        _raise_command_error(exc, urls, connected=registered)
    return EXIT_OK


async def _check_reachable(urls: Sequence[str]) -> None:
    """Open (and close) a channel to the first URL that answers; raise if none does."""
    from schedd.sdk.connect import ConnectFailed, open_channel

    failure: ConnectFailed | None = None
    for url in urls:
        try:
            async with open_channel(url, connect_timeout=CONNECT_TIMEOUT):
                return
        except ConnectFailed as exc:
            failure = exc
    assert failure is not None
    raise failure


async def _cancel_on_signal(
    scope: trio.CancelScope, logger: logging.Logger,
    signums: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
    stopped_by: list[signal.Signals] | None = None,
) -> None:
    """Cancel ``scope`` at the first of ``signums``, noting it in ``stopped_by`` if given."""
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            logger.info("%s: stopping", signal.Signals(signum).name)
            if stopped_by is not None:
                stopped_by.append(signal.Signals(signum))
            scope.cancel()
            return


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# sim, bench
# ---------------------------------------------------------------------------------------------


def cmd_sim(args: argparse.Namespace) -> int:
    """``schedd sim``: simulated nodes until Ctrl-C, SIGTERM or ``--for``."""
    from schedd.sim import Fleet, lang_capabilities, parse_duration, print_stats, raise_fd_limit

    if not args.pools and not args.langs:
        raise CommandError("sim: say what the nodes serve: --pools A,B or --langs ZH,EN")
    setup_logging("debug" if args.verbose else "warning", "text")
    limit = raise_fd_limit()
    if args.nodes + 64 > limit:
        print(f"schedd: warning: {args.nodes} nodes need more file descriptors than the "
              f"limit of {limit}", file=sys.stderr)
    urls = _urls(args)
    fleet = Fleet(
        urls, args.nodes, capacity=args.capacity, pools=args.pools,
        capabilities=lang_capabilities(args.langs) if args.langs else {},
        duration=parse_duration(args.duration), fail_rate=args.fail_rate,
        disconnect_rate=args.disconnect_rate, token=args.token, prefix=args.prefix,
    )
    started = False

    def say(line: str) -> None:
        print(f"sim: {line}", file=sys.stderr, flush=True)

    async def serve() -> None:
        nonlocal started
        await _check_reachable(urls)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope, log)
            begun = time.monotonic()
            await nursery.start(fleet.run)
            started = True
            say(f"{args.nodes} nodes registered in {time.monotonic() - begun:.1f} s "
                f"via {', '.join(urls)}; Ctrl-C stops")
            nursery.start_soon(print_stats, fleet, args.stats_every, say)
            if args.run_for:
                await trio.sleep(args.run_for)
                nursery.cancel_scope.cancel()

    tune_gc()  # thousands of long-lived connections: see schedd.runtime
    try:
        trio.run(serve)
    except BaseException as exc:
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc)):
            return EXIT_OK
        _raise_command_error(exc, urls, connected=started)
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    """``schedd bench``: run the scenarios, print the table, write the JSON."""
    from schedd.bench import Options, default_json_path, run_bench, table, write_json
    from schedd.redis_process import REDIS_SERVER

    if REDIS_SERVER is None and args.url is None:
        raise CommandError("bench: redis-server is not installed (it starts its own)")
    if args.url is not None and "S3" in args.scenarios:
        raise CommandError("bench: S3 measures the daemon process; run it without --url")
    if args.url is not None and args.settings:
        raise CommandError("bench: --set configures the daemons the bench starts; with --url "
                           "it uses yours")
    options = Options(scale=args.scale, transport=args.transport, url=args.url,
                      settings=tuple(args.settings), probe_during=args.probe_during)
    path = args.json or default_json_path()
    stopped_by: list[signal.Signals] = []
    finished: list[str] = []

    def checkpoint(document: dict[str, Any]) -> None:
        write_json(document, path)
        finished[:] = list(document["results"])

    async def bench() -> dict[str, Any] | None:
        # Ctrl-C, SIGTERM and SIGHUP cancel the run: every daemon, redis-server and helper
        # process the scenarios started is stopped on the way out (a signal's default action
        # would leave them running).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, nursery.cancel_scope, log,
                               (signal.SIGINT, signal.SIGTERM, signal.SIGHUP), stopped_by)
            document = await run_bench(args.scenarios, options, checkpoint)
            nursery.cancel_scope.cancel()
            return document
        return None  # cancelled by a signal

    tune_gc()  # the bench's own fleets and clients: see schedd.runtime
    document = trio.run(bench)
    if document is None:
        name = stopped_by[0].name if stopped_by else "a signal"
        done = (f"the scenarios that finished ({', '.join(finished)}) are in {path}"
                if finished else "no scenario had finished")
        print(f"schedd: bench stopped by {name}; the processes it started are stopped; {done}",
              file=sys.stderr)
        return 128 + (stopped_by[0].value if stopped_by else signal.SIGTERM.value)
    print(table(document))
    print(f"schedd: results written to {path}", file=sys.stderr)
    failed = [name for name, result in document["results"].items() if "failed" in result]
    return EXIT_FAILED if failed else EXIT_OK
