"""``schedd submit``: submit a job and wait for its result."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import trio

import schedd.cli.client as cli_client
from schedd.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    _client_parent,
    _command_adder,
    _json_object,
    _positive_float,
)

if TYPE_CHECKING:
    from schedd.sdk.client import Client

log = logging.getLogger("schedd.cli")


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """``submit``."""
    add = _command_adder(subparsers)
    client = _client_parent()

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
            'schedd submit --requirements \'{"src_lang": "zh", "tgt_lang": "en"}\' '
            '\'{"audio": "..."}\'',
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

    return cli_client._run_client(args, body, reconnect=not args.no_wait)
