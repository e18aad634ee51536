"""The PEER scenario's schedd side: an SDK client and an SDK node, each a process of its own.

Rules of this module (the drivers' contract is the same for every system the scenario
compares; :mod:`schedd.devtools.peer_bench` holds the other side):

* ``python -m schedd.devtools.peer_drivers node URL CAPACITY``: one SDK ``Node`` of
  ``CAPACITY`` slots on the bench pool, a no-op handler (returns ``None``); prints ``ready``
  once registered and runs until killed.
* ``python -m schedd.devtools.peer_drivers client URL SERIAL WARMUP BURST TIMEOUT``: one SDK
  ``Client``. First ``WARMUP + SERIAL`` no-op jobs one after the other, then one JSON line
  ``{"serial_s": [...]}`` (the ``SERIAL`` round trips, ``submit`` called to ``result()``
  returned, in seconds). Then it waits for a line on stdin (the bench's snapshot is taken
  meanwhile), submits ``BURST`` jobs at once (:func:`submit_burst`) and waits for every
  result, ``TIMEOUT`` seconds at most; then one JSON line (:func:`burst_report`): the seconds
  from the first submit to the last result, and the jobs submitted, received, lost,
  duplicated and failed.
* Both run on trio (the SDK's fastest loop: docs/decisions/0022-sdk-on-anyio.md, "Measured").
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio

from schedd.devtools.bench.measure import PAYLOAD, POOL

__all__ = ["burst_report", "main", "submit_burst"]


def emit(value: Any) -> None:
    """One line of the driver's answer on stdout."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def burst_report(seconds: float, submitted: Sequence[str], received: Sequence[str],
                 failed: int = 0) -> dict[str, Any]:
    """A burst's outcome: ``received`` holds one job id per result that came back (a repeat
    counts as duplicated; an id never submitted too); ``lost``: submitted ids that never came."""
    wanted = set(submitted)
    counts = Counter(received)
    duplicated = sum(n - 1 for n in counts.values()) + sum(
        1 for job_id in counts if job_id not in wanted)
    return {"seconds": round(seconds, 6), "submitted": len(submitted),
            "received": len(received), "lost": len(wanted - counts.keys()),
            "duplicated": duplicated, "failed": failed}


async def submit_burst(client: Any, n: int) -> list[Any]:
    """Submit ``n`` no-op jobs at once, as BullMQ's ``addBulk`` does: one ``submit_many`` (array
    frames of the daemon's ``max_batch``, each stored by one script call); their handles."""
    return list(await client.submit_many([{"payload": PAYLOAD, "pools": [POOL]}] * n))


async def _client(url: str, serial: int, warmup: int, burst: int, limit: float) -> None:
    from schedd.sdk import Client

    async with Client.connect(url) as client:
        seconds: list[float] = []
        for index in range(warmup + serial):
            started = time.perf_counter()
            done = await (await client.submit(PAYLOAD, pools=[POOL])).result()
            elapsed = time.perf_counter() - started
            if not done.ok:
                raise RuntimeError(f"job {done.job_id} failed: {done.error}")
            if index >= warmup:
                seconds.append(elapsed)
        emit({"serial_s": seconds})
        await anyio.to_thread.run_sync(sys.stdin.readline)
        received: list[str] = []
        failed = 0
        started = time.perf_counter()
        handles = await submit_burst(client, burst)

        async def wait(handle: Any) -> None:
            nonlocal failed
            done = await handle.result()
            received.append(done.job_id)
            failed += not done.ok

        with anyio.move_on_after(limit):
            async with anyio.create_task_group() as tg:
                for handle in handles:
                    tg.start_soon(wait, handle)
        elapsed = time.perf_counter() - started
        emit(burst_report(elapsed, [h.job_id for h in handles], received, failed))


async def _node(url: str, capacity: int) -> None:
    from schedd.sdk import JobContext, Node

    async def handler(ctx: JobContext) -> Any:
        return None

    node = Node(url, handler, pools=[POOL], capacity=capacity, node_id=f"peer-{os.getpid()}")
    async with anyio.create_task_group() as tg:
        await tg.start(node.run)
        emit("ready")


def main(argv: list[str]) -> None:
    """``node URL CAPACITY`` or ``client URL SERIAL WARMUP BURST TIMEOUT``."""
    role, url, *rest = argv
    if role == "node":
        anyio.run(_node, url, int(rest[0]), backend="trio")
    elif role == "client":
        serial, warmup, burst = (int(value) for value in rest[:3])
        anyio.run(_client, url, serial, warmup, burst, float(rest[3]), backend="trio")
    else:
        raise SystemExit(f"unknown role {role!r}: node or client")


if __name__ == "__main__":
    main(sys.argv[1:])
