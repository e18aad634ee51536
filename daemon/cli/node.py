"""``schedd node``: a demo node that echoes its payloads."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import trio

from schedd.cli.base import EXIT_OK, _client_parent, _command_adder, _positive_int
from schedd.cli.client import (
    _cancel_on_signal,
    _check_reachable,
    _leaves,
    _raise_command_error,
    _urls,
)
from schedd.logs import setup_logging

if TYPE_CHECKING:
    from schedd.sdk.node import JobContext


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``node``."""
    add = _command_adder(subparsers)
    client = _client_parent()

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
            "schedd node --pool 'zh>en' --pool 'en>zh' --capacity 4 --node-id box-7",
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


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
