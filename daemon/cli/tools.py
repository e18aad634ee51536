"""``schedd sim`` and ``schedd bench``: the measurement tools of :mod:`schedd.devtools`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from schedd.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    _client_parent,
    _command_adder,
    _names,
    _positive_float,
    _positive_int,
)
from schedd.cli.client import (
    _cancel_on_signal,
    _check_reachable,
    _leaves,
    _raise_command_error,
    _urls,
)
from schedd.logs import setup_logging
from schedd.runtime import tune_gc

log = logging.getLogger("schedd.cli")


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``sim`` and ``bench``."""
    add = _command_adder(subparsers)
    client = _client_parent()

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
        instance killed; every job must end once), SLOWLORIS (a probe client's latency while
        connections that never finish their handshake hold the listener) (docs/benchmarks.md).
        --scale tiny runs each in seconds (the CI smoke test); full takes several minutes.
        Ctrl-C, SIGTERM or SIGHUP stop the run and every process it started (exit 128 + the
        signal's number); the JSON file keeps the scenarios that finished.
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
                       default=["S1", "S2", "S3", "S4", "S5", "CHAOS", "SLOWLORIS"],
                       metavar="S1,S2,...",
                       help="scenarios to run (default: all but SOAK, BROWSE, SDK, PIPE, ORDER"
                       ", BLOB, FAIR, RETAIN and PEER, which run when named)")
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


def _duration(text: str) -> str:
    from schedd.devtools.sim import parse_duration

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
    from schedd.devtools.bench import parse_setting

    try:
        return parse_setting(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scenarios(text: str) -> list[str]:
    from schedd.devtools.bench import SCENARIOS

    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or text!r}; choose from {','.join(SCENARIOS)}"
        )
    return names


def cmd_sim(args: argparse.Namespace) -> int:
    """``schedd sim``: simulated nodes until Ctrl-C, SIGTERM or ``--for``."""
    from schedd.devtools.sim import (
        Fleet,
        lang_capabilities,
        parse_duration,
        print_stats,
        raise_fd_limit,
    )

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
    from schedd.devtools.bench import Options, default_json_path, run_bench, table, write_json
    from schedd.devtools.redis_process import REDIS_SERVER

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
