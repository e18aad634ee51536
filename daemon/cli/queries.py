"""The query commands: ``schedd nodes``, ``pools``, ``jobs``, ``job``, ``clients`` and
``usage``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

import schedd.cli.client as cli_client
from schedd.cli.base import (
    EXIT_OK,
    QUERY_TIMEOUT,
    CommandError,
    _client_parent,
    _command_adder,
    _json_parent,
)
from schedd.core.browse import DEFAULT_JOB_PAGE, JobFilter, parse_time_bound
from schedd.protocol import JOB_STATES, MAX_JOB_PAGE

if TYPE_CHECKING:
    from schedd.protocol import Job
    from schedd.sdk.client import Client


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``nodes``, ``pools``, ``jobs``, ``job``, ``clients`` and ``usage``."""
    add = _command_adder(subparsers)
    client = _client_parent()
    as_json = _json_parent()

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
    jobs = add(
        "jobs",
        cmd_jobs,
        "count jobs per state, or list them with filters",
        """
        Without filters: how many jobs are in each state (plus lifetime totals), how many times
        nodes were excluded from pools and why, and the live daemon instances.

        With any filter (or --limit, --cursor, --all): a table of the jobs of your principal
        (token) that match every filter given, newest submission first, one page at a time.
        Times (--since, --until) bound the submission time: unix milliseconds or a duration
        before now (90s, 10m, 2h, 7d). A page holds at most --limit jobs (1-500, default 50);
        the command prints the cursor of the next page, or follow every page with --all.
        """,
        [
            "schedd jobs",
            "schedd jobs --state failed --since 10m",
            "schedd jobs --node gpu-box-7 --state running",
            "schedd jobs --pool 'zh>en' --since 2h --all --json",
        ],
        [client, as_json],
    )
    jobs.add_argument("--state", choices=JOB_STATES, help="jobs in this state now")
    jobs.add_argument("--pool", help="jobs that name this pool among their candidate pools")
    jobs.add_argument("--node", help="jobs that had an attempt on this node")
    jobs.add_argument("--principal", help="your own principal (a client sees only its jobs; "
                      "another principal is refused)")
    jobs.add_argument("--since", metavar="TIME", help="submitted at or after TIME (unix ms, or "
                      "a duration before now: 10m)")
    jobs.add_argument("--until", metavar="TIME", help="submitted before TIME (unix ms, or a "
                      "duration before now)")
    jobs.add_argument("--limit", type=int, help=f"jobs per page, 1-{MAX_JOB_PAGE} (default "
                      f"{DEFAULT_JOB_PAGE})")
    jobs.add_argument("--cursor", help="continue a listing from the cursor a page printed")
    jobs.add_argument("--all", action="store_true", help="follow the cursor through every page")
    job = add(
        "job",
        cmd_job,
        "show one job",
        """
        Show a job's state, attempt, node, pools, timings, the reason of its last retry, the
        sizes of its payload and output, and its attempts: the node of each, how it ended
        (rejected, lost, timed_out; the job's state for the last) and when. Only the principal
        (token) that submitted a job may see it.
        """,
        ["schedd job j-42", "schedd job j-42 --json"],
        [client, as_json],
    )
    job.add_argument("job_id", metavar="JOB_ID", help="the job's id")
    add(
        "clients",
        cmd_clients,
        "list connected clients",
        """
        List the client connections of every live daemon instance (from Redis, so every
        instance shows the same): instance, principal, peer address, the protocol version it
        spoke, its name and since when it is connected. A client sees only the connections of
        its own principal (token).
        """,
        ["schedd clients", "schedd clients --url ws://10.0.0.5:8765 --token $TOKEN --json"],
        [client, as_json],
    )
    add(
        "usage",
        cmd_usage,
        "show usage and refusals per principal",
        """
        Show, per principal, its jobs in flight (assigned or running) and its in-flight cap,
        its queued jobs, the payload bytes its unfinished jobs hold, and its submits refused,
        by error code ([quotas] in sched.toml; from Redis, the same on every instance). A
        client sees only its own principal (token); an admin token sees every principal, the
        most recently active first.
        """,
        ["schedd usage", "schedd usage --token $ADMIN_TOKEN --json"],
        [client, as_json],
    )


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


def _listing(args: argparse.Namespace, what: str) -> list[dict[str, Any]]:
    """The ``what`` list of a ``what`` query, to print as a table; empty when there is nothing
    more to print (``--json`` printed the answer, or "no <what>" was printed)."""
    data = cli_client._query(args, what)
    if args.json:
        _print_json(data)
        return []
    items: list[dict[str, Any]] = data.get(what, [])
    if not items:
        print(f"no {what}")
    return items


def cmd_nodes(args: argparse.Namespace) -> int:
    """``schedd nodes``."""
    nodes = _listing(args, "nodes")
    if not nodes:
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
            node.get("protocol") or "-",
            _age(node.get("last_heartbeat_ms"), now_ms),
        )
        for node in nodes
    ]
    headers = ("NODE", "STATE", "POOLS", "USED", "LOAD", "EPOCH", "OWNER", "PROTO",
               "LAST HEARTBEAT")
    print(_table(headers, rows))
    return EXIT_OK


def cmd_pools(args: argparse.Namespace) -> int:
    """``schedd pools``."""
    data = cli_client._query(args, "pools")
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


_LISTING = ("state", "pool", "node", "principal", "since", "until", "limit", "cursor")


def _job_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The ``query`` ``jobs`` filters the options give (times as unix ms), checked as the
    daemon checks them."""
    now_ms = int(time.time() * 1000)
    filters: dict[str, Any] = {}
    try:
        for name in _LISTING:
            value = getattr(args, name)
            if value is None:
                continue
            if name in ("since", "until"):
                value = parse_time_bound(value, now_ms, f"--{name}")
            filters[name] = value
        JobFilter(**filters)
    except ValueError as exc:
        raise CommandError(f"schedd jobs: {exc}") from None
    return filters


def _list_jobs(args: argparse.Namespace) -> int:
    filters = _job_filters(args)

    async def body(client: Client) -> dict[str, Any]:
        listed: list[Any] = []
        cursor = filters.pop("cursor", None)
        while True:
            with trio.fail_after(QUERY_TIMEOUT):
                page = await client.query("jobs", **filters, cursor=cursor)
            listed += page.get("jobs") or []
            cursor = page.get("cursor")
            if not args.all or cursor is None:
                return {"jobs": listed, "cursor": cursor}

    data = cli_client._run_client(args, body)
    if args.json:
        _print_json(data)
        return EXIT_OK
    listed: list[dict[str, Any]] = data["jobs"]
    rows = [
        (
            job.get("job_id", "?"),
            job.get("state", "?"),
            job.get("node") or "-",
            _list(job.get("pools")),
            f"{job.get('attempt', 0)}/{job.get('max_attempts', 0)}",
            _stamp(job.get("submitted_ms")),
            _stamp(job.get("finished_ms")),
            job.get("error") or "-",
        )
        for job in listed
    ]
    headers = ("JOB", "STATE", "NODE", "POOLS", "ATTEMPT", "SUBMITTED", "FINISHED", "ERROR")
    print(_table(headers, rows) if rows else "no jobs match")
    if data["cursor"] is not None:
        print(f"more: --cursor {data['cursor']}")
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    """``schedd jobs``."""
    if args.all or any(getattr(args, name) is not None for name in _LISTING):
        return _list_jobs(args)
    data = cli_client._query(args, "stats")
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

    job = cli_client._run_client(args, body)
    snapshot = attrs.asdict(job)
    snapshot.pop("ref", None)
    if not snapshot.get("attachments"):  # as the wire has it: only when there are some
        snapshot.pop("attachments", None)
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
    attempts = info.pop("attempts", None)
    for key, value in info.items():
        if key == "timings" and isinstance(value, dict):
            rows.extend((name, _stamp(ms)) for name, ms in value.items())
        elif isinstance(value, list | tuple):
            rows.append((key, _list(value)))
        elif isinstance(value, dict):
            rows.append((key, json.dumps(value, ensure_ascii=False)))
        else:
            rows.append((key, "-" if value in (None, "") else value))
    if job.traceparent:
        rows.append(("traceparent", job.traceparent))
    width = max(len(key) for key, _value in rows)
    print("\n".join(f"{key.ljust(width)}  {value}" for key, value in rows))
    if isinstance(attempts, list) and attempts:
        print()
        print(_table(
            ("ATTEMPT", "NODE", "OUTCOME", "ASSIGNED", "ACCEPTED", "ENDED", "REASON"),
            [(a.get("attempt", "?"), a.get("node") or "-", a.get("outcome") or "-",
              _stamp(a.get("assigned_ms")), _stamp(a.get("accepted_ms")),
              _stamp(a.get("ended_ms")), a.get("reason") or "-")
             for a in attempts if isinstance(a, dict)],
        ))  # fmt: skip
    return EXIT_OK


def cmd_clients(args: argparse.Namespace) -> int:
    """``schedd clients``."""
    clients = _listing(args, "clients")
    if not clients:
        return EXIT_OK
    now_ms = time.time() * 1000
    rows = [
        (
            entry.get("instance") or "-",
            entry.get("principal") or "-",
            entry.get("peer") or "-",
            entry.get("protocol") or "-",
            entry.get("name") or "-",
            _age(entry.get("connected_ms"), now_ms),
        )
        for entry in clients
    ]
    print(_table(("INSTANCE", "PRINCIPAL", "PEER", "PROTO", "NAME", "CONNECTED"), rows))
    return EXIT_OK


def cmd_usage(args: argparse.Namespace) -> int:
    """``schedd usage``."""
    usage = _listing(args, "usage")
    if not usage:
        return EXIT_OK
    rows = [
        (
            entry.get("principal") or "-",
            f"{entry.get('in_flight', 0)}/{entry.get('max_in_flight') or '-'}",
            entry.get("queued", 0),
            entry.get("payload_bytes", 0),
            ",".join(f"{code}={n}" for code, n in (entry.get("refused") or {}).items()) or "-",
        )
        for entry in usage
    ]
    print(_table(("PRINCIPAL", "IN_FLIGHT", "QUEUED", "PAYLOAD_BYTES", "REFUSED"), rows))
    return EXIT_OK
