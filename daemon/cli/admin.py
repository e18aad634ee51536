"""The operator commands: ``schedd drain``, ``undrain``, ``cancel`` and ``requeue``.

Each sends ``admin`` on a client connection whose ``--token`` must be one of ``[auth]
admin_tokens``; any other token gets a refusal naming that (exit status 2) and nothing changes.
Every action is idempotent: repeating one prints ``unchanged``.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any, Final

import trio

import schedd.cli.client as cli_client
from schedd.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    QUERY_TIMEOUT,
    CommandError,
    _client_parent,
    _command_adder,
    _json_parent,
    _positive_int,
)
from schedd.protocol import MAX_ADMIN_JOBS

if TYPE_CHECKING:
    from schedd.sdk.client import Client

_TOKEN_NOTE: Final = """

        The --token (or $SCHEDD_TOKEN) must be an operator's: one of [auth] admin_tokens
        (docs/operations.md); with any other token the daemon refuses and nothing changes."""
_STATES: Final = ("failed", "canceled", "timed_out")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``drain``, ``undrain``, ``cancel`` and ``requeue``."""
    add = _command_adder(subparsers)
    client = _client_parent()
    as_json = _json_parent()
    # the commands acting on one node or one job: (name, summary, description, target, example)
    single = (
        ("drain", "drain a node: no new jobs, running ones finish (operator)", """
        Stop giving NODE new jobs; the jobs it runs finish normally. The node is told (on
        whichever daemon instance holds its connection) and stays drained until it registers
        again or `schedd undrain` lifts the drain.""", "node", "gpu-box-7"),
        ("undrain", "lift a node's drain (operator)", """
        Put a draining NODE back into its pools: it takes queued and new jobs again. An offline
        node cannot be undrained (it registers again when it reconnects).""", "node",
         "gpu-box-7"),
        ("cancel", "cancel a job of any client (operator)", """
        Cancel JOB whoever submitted it: a queued job leaves its queue, a running one is
        stopped on its node; its client gets its done (canceled). A finished job is left as it
        is.""", "job", "j-42"),
    )
    for name, summary, description, target, example in single:
        command = add(name, cmd_single, summary, description + _TOKEN_NOTE,
                      [f"schedd {name} {example} --token $ADMIN_TOKEN"], [client, as_json])
        command.add_argument("target", metavar=target.upper(), help=f"the {target}'s id")
        command.set_defaults(action=name, field=f"{target}_id")
    requeue = add(
        "requeue", cmd_requeue, "run failed jobs again (operator)",
        f"""
        Put finished jobs back to work with as many attempts again as they were given: the
        JOBs named, or, with no JOB, the newest ones matching the filter
        (--state, default failed; --pool; --since), newest first, at most --limit (1 to
        {MAX_ADMIN_JOBS} per call; a larger limit is refused). A job that is queued or
        running is left as it is; one that ended done is refused. Filters look through at
        most 2,000 jobs of each state, newest submission first.{_TOKEN_NOTE}
        """,
        [
            "schedd requeue j-42 j-43 --token $ADMIN_TOKEN",
            "schedd requeue --state failed --since 10m --token $ADMIN_TOKEN",
            "schedd requeue --state failed,timed_out --pool 'zh>en' --limit 20",
        ],
        [client, as_json],
    )
    requeue.add_argument("job_ids", nargs="*", metavar="JOB", help="the jobs' ids")
    filters = requeue.add_argument_group("filter (without JOB)")
    filters.add_argument("--state", type=_states, metavar="STATES",
                         help=f"comma-separated: {', '.join(_STATES)} (default: failed)")
    filters.add_argument("--pool", metavar="POOL", help="jobs with POOL among their pools")
    filters.add_argument("--since", type=_since, metavar="AGE",
                         help="finished within AGE: 90s, 10m, 2h, 1d, or seconds")
    filters.add_argument("--limit", type=_positive_int(), metavar="N",
                         help=f"at most N jobs, 1 to {MAX_ADMIN_JOBS} (default: "
                         f"{MAX_ADMIN_JOBS})")


def _states(text: str) -> list[str]:
    states = [state.strip() for state in text.split(",") if state.strip()]
    for state in states:
        if state not in _STATES:
            raise argparse.ArgumentTypeError(
                f"{state!r} is not requeued; one of {', '.join(_STATES)}")
    if not states:
        raise argparse.ArgumentTypeError(f"expected one or more of {', '.join(_STATES)}")
    return states


def _since(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected an age such as 90s, 10m, 2h or 1d, got {text!r}")
    return float(match[1]) * _UNITS[match[2] or "s"]


def _act(args: argparse.Namespace, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send each ``admin`` (``action`` and its fields) in turn; their results in order. A
    refusal about one job of several becomes its result; any other ends the command."""
    from schedd.sdk.client import RequestFailed

    async def body(client: Client) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for call in calls:
            try:
                with trio.fail_after(QUERY_TIMEOUT):
                    results.extend(await client.admin(**call))
            except RequestFailed as exc:
                if exc.code == "E_FORBIDDEN":
                    raise CommandError(
                        f"refused: {exc.message} (the --token or $SCHEDD_TOKEN given is not "
                        "an admin token)") from None
                if len(calls) == 1:
                    raise
                results.append({"job_id": call.get("job_id"), "outcome": "error",
                                "code": exc.code, "message": exc.message})
        return results

    return cli_client._run_client(args, body)


def _report(args: argparse.Namespace, results: list[dict[str, Any]]) -> int:
    failed = any(result.get("outcome") == "error" for result in results)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return EXIT_FAILED if failed else EXIT_OK
    if not results:
        print("no job matched")
    for result in results:
        target = result.get("node_id") or result.get("job_id") or "?"
        outcome = result.get("outcome", "?")
        if outcome == "error":
            print(f"{target}: {result.get('code')}: {result.get('message')}")
            continue
        extra = ""
        if "jobs" in result:
            extra = f", {result['jobs']} job(s) still running"
        elif "attempt" in result:
            extra = f", attempt {result['attempt']}"
        print(f"{target}: {outcome} (now {result.get('state', '?')}{extra})")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_single(args: argparse.Namespace) -> int:
    """``schedd drain NODE``, ``schedd undrain NODE``, ``schedd cancel JOB``."""
    return _report(args, _act(args, [{"action": args.action, args.field: args.target}]))


def cmd_requeue(args: argparse.Namespace) -> int:
    """``schedd requeue JOB...`` or ``schedd requeue --state ... --since ...``."""
    filtered = any(value is not None for value in (args.state, args.pool, args.since, args.limit))
    if args.job_ids and filtered:
        raise CommandError("give JOB ids or a filter (--state, --pool, --since, --limit), "
                           "not both")
    if args.job_ids:
        calls = [{"action": "requeue", "job_id": job_id} for job_id in args.job_ids]
    else:
        fields: dict[str, Any] = {"states": args.state or [], "pool": args.pool,
                                  "since": args.since, "limit": args.limit}
        calls = [{"action": "requeue", **fields}]
    return _report(args, _act(args, calls))
