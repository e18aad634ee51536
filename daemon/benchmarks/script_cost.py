"""Measure what the core costs Redis: memory per node and per retained job (``MEMORY USAGE``)
and the server-side cost of select+reserve (``job_submit``) with 10, 1,000 and 10,000 nodes in
one pool (``INFO commandstats``, usec_per_call).

Starts its own ``redis-server`` on a free port (never touches another Redis). Run::

    python -m schedd.benchmarks.script_cost [--sizes 10,1000,10000] [--calls 2000]
                                            [--cpu N | --no-pin] [--json FILE]

Two figures per pool size:

* **one call at a time** (``select_reserve_usec_per_call``, the S4 figure): this process and its
  ``redis-server`` run on one CPU, the first this process may use (``--cpu N``: that one;
  ``--no-pin``: anywhere). One call at a time leaves the server idle between calls; on a virtual
  machine an idle vCPU is halted and woken again for the next call, which adds ~40 % to the
  measured time of the call itself (docs/benchmarks.md, "Script cost"). Sharing one CPU, the two
  processes take turns and the server runs its calls on a CPU that has not gone to sleep; but
  this process runs on that CPU between any two calls, so each call starts with the caches
  holding this process's data, not Redis's.
* **back to back** (``select_reserve_usec_per_call_back_to_back``): the same number of calls,
  IN_FLIGHT at a time, this process moved to the other CPUs (when there are any): Redis runs
  the calls one after another, as it does under load. The difference between the two is what
  the caches cost a lone call, not work of the script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from schedd.core import Core, CoreSettings, JobSpec
from schedd.redis_process import RedisServer
from schedd.store import open_store
from schedd.store.base import Store


def _stats(info: bytes) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name[8:]] = {k: float(v) for k, v in (p.split("=") for p in rest.split(","))
                             if k in ("calls", "usec", "usec_per_call")}
    return out


async def _script_stats(store: Store) -> dict[str, float]:
    """calls, usec and usec_per_call of the scripts since ``CONFIG RESETSTAT`` (FCALL, or
    EVALSHA where the server runs no functions)."""
    commandstats = _stats(await store.execute("INFO", "commandstats"))
    return commandstats.get("fcall") or commandstats["evalsha"]


async def _memory_usage(store: Store, key: str) -> int:
    return int(await store.execute("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)


#: Calls in flight in the back-to-back measurement.
IN_FLIGHT = 256


async def _back_to_back(store: Store, core: Core, calls: int,
                        driver_cpus: set[int] | None) -> float:
    """usec_per_call of ``calls`` submits with IN_FLIGHT in flight, this process on
    ``driver_cpus`` (None: as it is): Redis runs them one after another, as it does under
    load, without this process running on its CPU in between."""
    await store.execute("CONFIG", "RESETSTAT")
    before = os.sched_getaffinity(0)
    if driver_cpus:
        os.sched_setaffinity(0, driver_cpus)

    async def submit_every(first: int) -> None:
        for i in range(first, calls, IN_FLIGHT):
            await core.submit(JobSpec(pools=("p",), job_id=f"b2b-{i:06d}", payload_json='{"n": 1}'))

    try:
        async with trio.open_nursery() as nursery:
            for first in range(IN_FLIGHT):
                nursery.start_soon(submit_every, first)
    finally:
        os.sched_setaffinity(0, before)
    stats = await _script_stats(store)
    assert int(stats["calls"]) == calls, stats
    return round(stats["usec_per_call"], 2)


async def measure(store: Store, nodes: int, calls: int,
                  driver_cpus: set[int] | None = None) -> dict[str, Any]:
    await store.execute("FLUSHALL")
    core = Core(store, CoreSettings(namespace="bench", instance="bench-1", heartbeat_interval=600))
    await core.start()
    k = core.keys
    for i in range(nodes):
        await core.register_node(node_id=f"node-{i:05d}", capacity=1_000_000, pools=["p"],
                                 capabilities_json='{"gpu": "a100", "langs": ["en", "zh"]}',
                                 labels_json='{"zone": "eu-1"}')
    # a node's own record (its hash; its job set is empty) and its share of the shared sorted
    # sets (pool membership, liveness, node index), before any job lands on it
    node_bytes = await _memory_usage(store, k.node("node-00000"))
    shared = sum([await _memory_usage(store, key) for key in (k.pool("p"), k.alive, k.nodes)])
    await store.execute("CONFIG", "RESETSTAT")
    for i in range(calls):
        await core.submit(JobSpec(pools=("p",), job_id=f"job-{i:06d}", payload_json='{"n": 1}'))
    stats = await _script_stats(store)
    job_id = "job-000000"
    node_id = (await store.execute("HGET", k.job(job_id), "node")).decode()
    await core.result(job_id, node_id=node_id, attempt=1, ok=True, output_json='{"text": "ok"}')
    job_bytes = await _memory_usage(store, k.job(job_id))
    back_to_back = await _back_to_back(store, core, calls, driver_cpus)
    return {
        "nodes_in_pool": nodes,
        "select_reserve_calls": int(stats["calls"]),
        "select_reserve_usec_per_call": round(stats["usec_per_call"], 2),
        "select_reserve_usec_per_call_back_to_back": back_to_back,
        "node_record_bytes": node_bytes,
        "node_share_of_indexes_bytes": round(shared / nodes, 1),
        "retained_job_bytes": job_bytes,
    }


FIRST_CPU = -1  # pin to the first CPU this process may use


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run this process (and the children it starts meanwhile) on ``cpu`` only (None: as is)."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    if cpu == FIRST_CPU:
        cpu = min(before)
    if cpu not in before:
        raise ValueError(f"cpu {cpu} is not one this process may use: {sorted(before)}")
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def run(
    sizes: list[int], calls: int, cpu: int | None = FIRST_CPU
) -> list[dict[str, Any]]:
    allowed = os.sched_getaffinity(0)
    with pinned(cpu), RedisServer() as server:
        # back to back, this process runs on the CPUs the server does not (if there are any)
        driver_cpus = allowed - os.sched_getaffinity(0) if cpu is not None else None
        async with open_store(server.url) as store:
            version = (await store.execute("INFO", "server")).decode()
            redis_version = next(
                line.split(":", 1)[1] for line in version.splitlines()
                if line.startswith("redis_version:")
            )
            rows = []
            for size in sizes:
                row = await measure(store, size, calls, driver_cpus)
                row["redis_version"] = redis_version.strip()
                row["pinned_cpu"] = sorted(os.sched_getaffinity(0)) if cpu is not None else None
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
            return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="pool sizes, comma separated")
    parser.add_argument("--calls", type=int, default=2000, help="job_submit calls per size")
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--cpu", type=int, default=FIRST_CPU,
                     help="run this process and redis-server on this CPU only (default: the "
                          "first one this process may use)")
    pin.add_argument("--no-pin", action="store_true", help="let them run on any CPU")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    cpu = None if args.no_pin else args.cpu
    try:
        rows = trio.run(run, [int(s) for s in args.sizes.split(",")], args.calls, cpu)
    except ValueError as exc:
        parser.error(str(exc))
    header = (f"{'nodes':>7} {'select+reserve us/call':>23} {'back to back':>13} {'node B':>7} "
              f"{'index B/node':>13} {'job B':>6}")
    print(header)
    for r in rows:
        print(f"{r['nodes_in_pool']:>7} {r['select_reserve_usec_per_call']:>23} "
              f"{r['select_reserve_usec_per_call_back_to_back']:>13} "
              f"{r['node_record_bytes']:>7} {r['node_share_of_indexes_bytes']:>13} "
              f"{r['retained_job_bytes']:>6}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
