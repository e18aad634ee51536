"""The Redis floor: what a no-op script call costs, measured against the redis-server a scenario
uses, at the moment it uses it, through the daemon's own client code.

Every scenario's absolute figures move with the host; the floor moves with them. A scenario's
figure divided by the floor measured in the same run, against the same server, is the figure the
targets are set on (docs/decisions/0018-benchmarks-as-ratios.md):

* **one at a time** (``one_at_a_time_us``): ``calls`` no-op script calls, each sent when the last
  one's reply came, through :class:`schedd.store.redis_store.RedisStore` (one ``execute`` per
  call, as ``Core`` makes them); their latencies in µs. Its p50 is the *round trip*, the unit of
  the latency ratios.
* **pipelined** (``calls_per_s``): ``PIPELINED * calls`` no-op script calls with ``IN_FLIGHT``
  callers at once on the same connection (the store pipelines them, as it does the daemon's
  calls under load); calls per second. ``calls_per_s`` divided by a job's script calls is the
  most jobs per second the Redis path could carry: the unit of the throughput ratio.
* **server side** (``server_usec_per_call``): Redis's own ``usec_per_call`` (``INFO
  commandstats``) of the one-at-a-time calls: the unit of the script-cost ratio.

The no-op is a function of a library of its own (``FCALL``), or ``EVALSHA`` of the same body
where the server runs no functions: the path the daemon's scripts take
(:class:`schedd.store.scripts.Scripts`).
"""

from __future__ import annotations

import math
import time
from typing import Any, Final

import trio

from schedd.devtools.bench.measure import percentiles
from schedd.devtools.redis_process import command_stats
from schedd.errors import StoreResponseError
from schedd.store import open_store
from schedd.store.base import Arg, Store

BODY: Final = "return 1"
LIBRARY: Final = "schedd_bench_floor"
FUNCTION: Final = "schedd_bench_floor_noop"
LIBRARY_SOURCE: Final = (f"#!lua name={LIBRARY}\n"
                         f"redis.register_function('{FUNCTION}', function() {BODY} end)\n")
#: Callers at once in the pipelined measurement.
IN_FLIGHT: Final = 64
#: Calls of the one-at-a-time measurement, by scale (well under a second at full scale).
CALLS: Final = {"full": 5000, "tiny": 300}
#: The pipelined measurement makes this many times as many calls (they take less time each).
PIPELINED: Final = 4


async def _noop_command(store: Store) -> tuple[Arg, ...]:
    """The no-op call as the daemon would make it: ``FCALL`` of a loaded function, or
    ``EVALSHA`` of a loaded script where the server cannot run functions."""
    try:
        await store.execute("FUNCTION", "LOAD", "REPLACE", LIBRARY_SOURCE)
    except StoreResponseError as exc:
        text = str(exc)
        if "unknown command" not in text.lower() and not text.startswith("NOPERM"):
            raise
        sha = await store.execute("SCRIPT", "LOAD", BODY)
        return ("EVALSHA", sha.decode() if isinstance(sha, bytes) else sha, 0)
    return ("FCALL", FUNCTION, 0)


async def _script_stats(store: Store, command: str) -> tuple[float, float]:
    """Calls and usec Redis has counted for ``command`` (``fcall`` or ``evalsha``) so far."""
    stats = command_stats(await store.execute("INFO", "commandstats")).get(command, {})
    return stats.get("calls", 0.0), stats.get("usec", 0.0)


async def measure_store(store: Store, calls: int) -> dict[str, Any]:
    """The floor on ``store``: see the module's docstring."""
    command = await _noop_command(store)
    await store.execute(*command)  # the first call is not measured
    name = str(command[0]).lower()
    calls0, usec0 = await _script_stats(store, name)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await store.execute(*command)
        latencies.append(time.perf_counter() - started)
    calls1, usec1 = await _script_stats(store, name)
    # the daemon's own script calls, if it runs any meanwhile, count here too: it is idle
    server_usec = (usec1 - usec0) / (calls1 - calls0) if calls1 > calls0 else math.nan

    async def caller(share: int) -> None:
        for _ in range(share):
            await store.execute(*command)

    pipelined = PIPELINED * calls
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(IN_FLIGHT):
            nursery.start_soon(caller, pipelined // IN_FLIGHT + (i < pipelined % IN_FLIGHT))
    elapsed = time.perf_counter() - started
    one = percentiles(latencies)  # ms: as µs below
    return {"command": name, "calls": calls, "in_flight": IN_FLIGHT,
            "one_at_a_time_us": {"n": one["n"], **{k: round(float(one[k]) * 1000, 1)
                                                    for k in ("p50", "p90", "p99", "max")}},
            "pipelined_calls": pipelined, "calls_per_s": round(pipelined / elapsed),
            "server_usec_per_call": round(server_usec, 2)}


async def measure(url: str, scale: str) -> dict[str, Any]:
    """The floor of the Redis at ``url`` (its own connection through the daemon's client)."""
    async with open_store(url) as store:
        return await measure_store(store, CALLS[scale])


def round_trips(ms: float | None, floor: dict[str, Any] | None) -> float | None:
    """``ms`` as a multiple of the floor's round trip (its one-at-a-time p50)."""
    if ms is None or not floor:
        return None
    return round(1000 * ms / float(floor["one_at_a_time_us"]["p50"]), 2)


def latency_ratios(lat: dict[str, Any], floor: dict[str, Any] | None) -> dict[str, float | None]:
    """p50 and p99 of a latency summary (ms) in floor round trips."""
    return {q: round_trips(lat.get(q), floor) for q in ("p50", "p99")}


def dispatch_ratios(summary: dict[str, Any], floor: dict[str, Any] | None
                    ) -> dict[str, dict[str, float | None]]:
    """submit→node and submit→done p50 / p99 of a recorder's summary in floor round trips."""
    return {f"{figure}_round_trips": latency_ratios(summary[f"{figure}_ms"], floor)
            for figure in ("submit_to_node", "submit_to_done")}


def jobs_fraction(jobs_per_s: float, script_calls_per_job: float | None,
                  floor: dict[str, Any] | None) -> float | None:
    """Jobs per second as a fraction of the floor's pipelined calls per second divided by the
    script calls a job needs: 1 would be a daemon that costs nothing beside its scripts' round
    trips at their cheapest."""
    if not floor or not script_calls_per_job:
        return None
    return round(jobs_per_s * script_calls_per_job / float(floor["calls_per_s"]), 3)
