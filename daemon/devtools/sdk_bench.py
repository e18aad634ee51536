"""``schedd bench --scenarios SDK``: the SDK's serial round trip on each event loop.

Rules of this module:

* Parameters: ``SCALES[scale]["SDK"]`` in :mod:`schedd.devtools.bench.scenarios`.
* One daemon and its redis-server (the bench's :func:`~schedd.devtools.bench.running_daemon`).
  Each **driver** (:data:`DRIVERS`: a name and a function ``(url, jobs, warmup)`` returning the
  round trips in seconds) runs in a process of its own (``python -m
  schedd.devtools.sdk_bench DRIVER URL JOBS WARMUP``, its round trips as JSON on stdout), so
  that each event loop has the process to itself. A driver runs one SDK ``Node`` and one SDK
  ``Client`` and submits ``warmup + jobs`` jobs one after the other; a round trip is
  ``submit`` called to ``result()`` returned (``time.perf_counter()``), the warm-up's left out.
* The drivers run in turn, ``rounds`` times (trio, asyncio, trio, asyncio...), so that a drift
  of the host's speed falls on all of them alike; each driver's samples are pooled.
* The ratios compare each driver's p50 and p99 with the first driver's (trio): the targets
  (:data:`TARGETS`) are at most 1.3 for asyncio and 1.5 for the blocking client, whose node runs
  on trio in a thread of the driver's process (docs/benchmarks.md).
* Every job must come back ``ok``; a driver that fails fails the scenario.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import anyio
import trio

from schedd.devtools.bench.daemon import running_daemon
from schedd.devtools.bench.measure import PAYLOAD, POOL, percentiles
from schedd.devtools.bench.options import Options

__all__ = ["DRIVERS", "TARGETS", "ratios", "run_sdk", "sdk_round_trips", "table_rows"]

Driver = Callable[[str, int, int], list[float]]
_REGISTER_TIMEOUT: Final = 10.0


async def sdk_round_trips(url: str, jobs: int, warmup: int) -> list[float]:
    """Round trips of ``jobs`` serial jobs (after ``warmup`` more) through an SDK node and
    client, on whatever event loop runs this."""
    from schedd.sdk import Client, JobContext, Node

    async def handler(ctx: JobContext) -> Any:
        return ctx.payload

    seconds: list[float] = []
    # The client first: its first connect fails at once when no daemon answers (a node would
    # retry forever).
    async with Client.connect(url) as client, anyio.create_task_group() as tg:
        node = Node(url, handler, pools=[POOL], node_id=f"sdk-bench-{os.getpid()}")
        with anyio.fail_after(_REGISTER_TIMEOUT):
            await tg.start(node.run)
        for index in range(warmup + jobs):
            started = time.perf_counter()
            handle = await client.submit(PAYLOAD, pools=[POOL])
            done = await handle.result()
            elapsed = time.perf_counter() - started
            if not done.ok:
                raise RuntimeError(f"job {done.job_id} failed: {done.error}")
            if index >= warmup:
                seconds.append(elapsed)
        tg.cancel_scope.cancel()
    return seconds


def _on(backend: str) -> Driver:
    def drive(url: str, jobs: int, warmup: int) -> list[float]:
        return anyio.run(sdk_round_trips, url, jobs, warmup, backend=backend)

    return drive


def _blocking(url: str, jobs: int, warmup: int) -> list[float]:
    """The blocking client from this (loop-less) thread; the node on trio in a thread of its
    own, left to end with the process."""
    from schedd.devtools.bench.sdk_blocking import blocking_round_trips
    from schedd.sdk import JobContext, Node

    ready = threading.Event()

    async def handler(ctx: JobContext) -> Any:
        return ctx.payload

    async def serve() -> None:
        node = Node(url, handler, pools=[POOL], node_id=f"sdk-bench-{os.getpid()}")
        async with anyio.create_task_group() as tg:
            await tg.start(node.run)
            ready.set()

    threading.Thread(target=anyio.run, args=(serve,), kwargs={"backend": "trio"},
                     daemon=True).start()
    if not ready.wait(_REGISTER_TIMEOUT):
        raise RuntimeError(f"the bench node did not register with {url}")
    return blocking_round_trips(url, warmup + jobs, POOL)[warmup:]


DRIVERS: Final[dict[str, Driver]] = {
    "trio": _on("trio"), "asyncio": _on("asyncio"), "blocking": _blocking,
}
"""The drivers measured, in order; the first is the reference of the ratios."""
TARGETS: Final = {"asyncio/trio": 1.3, "blocking/trio": 1.5}
"""Each ratio's target (docs/benchmarks.md)."""


def ratios(by_driver: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each driver's p50 and p99 over the first driver's (``"asyncio/trio"``: ...)."""
    names = list(by_driver)
    if not names:
        return {}
    base = by_driver[names[0]]
    result: dict[str, dict[str, float | None]] = {}
    for name in names[1:]:
        mine = by_driver[name]
        result[f"{name}/{names[0]}"] = {
            q: (round(mine[q] / base[q], 2) if base.get(q) and mine.get(q) is not None else None)
            for q in ("p50", "p99")
        }
    return result


async def _drive(name: str, url: str, jobs: int, warmup: int) -> list[float]:
    command = [sys.executable, "-m", "schedd.devtools.sdk_bench", name, url, str(jobs),
               str(warmup)]
    proc = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                  check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"SDK driver {name} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    seconds: list[float] = json.loads(proc.stdout)
    return seconds


async def run_sdk(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scenario: every driver ``rounds`` times in turn against one daemon."""
    samples: dict[str, list[float]] = {name: [] for name in DRIVERS}
    async with running_daemon(opt.settings, url=opt.url) as daemon:
        url = opt.url or daemon.url(opt.transport)
        for round_ in range(p["rounds"]):
            for name in DRIVERS:
                got = await _drive(name, url, p["jobs"], p["warmup"])
                samples[name] += got
                opt.say(f"  SDK: round {round_ + 1}, {name}: p50 "
                        f"{percentiles(got).get('p50')} ms over {len(got)} jobs")
    by_driver = {name: percentiles(values) for name, values in samples.items()}
    return {"transport": opt.transport, "round_trip_ms": by_driver, "ratios": ratios(by_driver)}


def table_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of ``schedd bench``'s table."""
    rows = []
    for name, lat in s["round_trip_ms"].items():
        value = f"p50 {lat['p50']} / p99 {lat['p99']} / max {lat['max']} ms" if lat.get("n") \
            else "-"
        who = ("BlockingClient, trio Node in a thread" if name == "blocking"
               else f"{name} Node and Client")
        rows.append(("SDK", f"serial submit->done, {who}", value))
    for pair, ratio in s["ratios"].items():
        target = f" (target <= {TARGETS[pair]})" if pair in TARGETS else ""
        rows.append(("SDK", f"{pair} round trip{target}",
                     f"p50 {ratio['p50']} / p99 {ratio['p99']}"))
    return rows


def main(argv: list[str]) -> None:
    """One driver's run: ``DRIVER URL JOBS WARMUP``; its round trips as JSON on stdout."""
    name, url, jobs, warmup = argv
    print(json.dumps(DRIVERS[name](url, int(jobs), int(warmup))))


if __name__ == "__main__":
    main(sys.argv[1:])
