"""Measure what the core costs Redis: memory per node and per retained job (``MEMORY USAGE``)
and the server-side cost of select+reserve (``job_submit``) with 10, 1,000 and 10,000 nodes in
one pool (``INFO commandstats``, usec_per_call).

Starts its own ``redis-server`` on a free port (never touches another Redis). Run::

    python -m schedd.devtools.script_cost [--sizes 10,1000,10000] [--calls 2000]
                                            [--cpu N | --no-pin] [--json FILE]

Three figures per pool size, each the server's own ``usec_per_call`` for the same number of
calls of the daemon's own command:

* **one call at a time** (``select_reserve_usec_per_call``, the S4 figure): this process and its
  ``redis-server`` run on one CPU, the first this process may use (``--cpu N``: that one;
  ``--no-pin``: anywhere). One call at a time leaves the server idle between calls; on a virtual
  machine an idle vCPU is halted and woken again for the next call, which adds to the
  measured time of the call itself (docs/decisions/0015-benchmark-method.md).
  Sharing one CPU, the two
  processes take turns and the server runs its calls on a CPU that has not gone to sleep. The
  commands are the ones ``Core.submit`` sends (recorded from it, with the job id changed),
  encoded before the clock starts and sent over a plain socket, so that between two calls
  this process runs only a send and a receive: the call finds the caches as the server left
  them.
* **through the core** (``select_reserve_usec_per_call_through_core``): the same, each call
  made by ``Core.submit`` (trio, the store's connection, the reply's decoding), as the daemon
  makes it. That much Python running on the server's CPU between any two calls evicts the
  server's data from the caches, and each call pays for it: the difference from the first
  figure is the driver's, not work of the script (docs/decisions/0015-benchmark-method.md).
* **back to back** (``select_reserve_usec_per_call_back_to_back``): the same number of calls,
  IN_FLIGHT at a time through the core, this process moved to the other CPUs (when there are
  any): Redis runs the calls one after another, as it does under load.

Before them, on the same server and CPU, the Redis floor (:mod:`schedd.devtools.bench.floor`,
the same number of calls): the one-at-a-time figure is also given in the floor's round trips
(``select_reserve_round_trips``) and in no-op script calls, server side
(``select_reserve_noop_calls``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import hiredis
import trio

from schedd.core import Core, CoreSettings, JobSpec
from schedd.devtools.redis_process import RedisServer, command_stats
from schedd.store import open_store
from schedd.store.base import Arg, Store
from schedd.store.resp import _encode as encode_command


async def _script_stats(store: Store) -> dict[str, float]:
    """calls, usec and usec_per_call of the scripts since ``CONFIG RESETSTAT`` (FCALL, or
    EVALSHA where the server runs no functions)."""
    commandstats = command_stats(await store.execute("INFO", "commandstats"))
    return commandstats.get("fcall") or commandstats["evalsha"]


class _Recorder(Store):
    """A store that forwards every command to ``store`` and keeps the script calls it sent."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.url = store.url
        self.script_calls: list[tuple[Arg, ...]] = []

    async def execute(self, *args: Arg) -> Any:
        if args and args[0] in ("FCALL", "EVALSHA"):
            self.script_calls.append(args)
        return await self.store.execute(*args)

    async def execute_blocking(self, *args: Arg) -> Any:
        return await self.store.execute_blocking(*args)

    async def aclose(self) -> None:
        """Nothing: the wrapped store belongs to the caller."""


async def submit_command(core: Core, spec: JobSpec) -> Callable[[str], bytes]:
    """The command ``core.submit(spec)`` sends, as RESP bytes for any job id.

    Submits ``spec`` (which must name its job) once through ``core``'s scripts over a recording
    store, then returns a function that puts another job id where that one was: as the job's
    key and as the job id argument; every other argument stays the daemon's own."""
    job_id = spec.job_id
    if not job_id:
        raise ValueError("submit_command needs a spec that names its job")
    recorder = _Recorder(core.store)
    await Core(recorder, core.settings, scripts=core.scripts).submit(spec)
    (command,) = recorder.script_calls
    job_key = core.keys.job(job_id)
    places: dict[int, Callable[[str], str]] = {
        i: core.keys.job for i, arg in enumerate(command) if arg == job_key}
    places.update({i: lambda other: other for i, arg in enumerate(command) if arg == job_id})
    if len(places) != 2:
        raise ValueError(f"job id {job_id!r} is not in the command exactly as its key and as "
                         f"one argument: {command!r}")

    def for_job(other: str) -> bytes:
        args = list(command)
        for i, make in places.items():
            args[i] = make(other)
        return encode_command(args)

    return for_job


def send_one_at_a_time(address: tuple[str, int], commands: list[bytes]) -> None:
    """Send each command and wait for its reply before the next, over a plain blocking socket:
    between two calls this process does nothing else. Blocks the caller's thread (and so trio's
    loop, on purpose: no other task runs on this CPU meanwhile). Every reply must be a new job's."""
    reader = hiredis.Reader()
    with socket.create_connection(address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for command in commands:
            sock.sendall(command)
            reply = reader.gets()
            while reply is False:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("redis-server closed the connection")
                reader.feed(data)
                reply = reader.gets()
            if isinstance(reply, hiredis.ReplyError):
                raise reply
            if reply[0][0] != b"new":
                raise RuntimeError(f"job_submit did not take a new job: {reply!r}")


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


async def measure(store: Store, address: tuple[str, int], nodes: int, calls: int,
                  driver_cpus: set[int] | None = None) -> dict[str, Any]:
    from schedd.devtools.bench.floor import measure_store as measure_floor

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

    def spec(job_id: str) -> JobSpec:
        return JobSpec(pools=("p",), job_id=job_id, payload_json='{"n": 1}')

    # the Redis floor, on this server and CPU, the pool in place (bench.floor)
    floor = await measure_floor(store, calls)
    # one at a time, lean: the daemon's own command, encoded before the clock starts
    for_job = await submit_command(core, spec("template"))
    commands = [for_job(f"lean-{i:06d}") for i in range(calls)]
    await store.execute("CONFIG", "RESETSTAT")
    send_one_at_a_time(address, commands)
    lean = await _script_stats(store)
    assert int(lean["calls"]) == calls, lean
    # one at a time through the core: the daemon's whole call path runs between two calls
    await store.execute("CONFIG", "RESETSTAT")
    for i in range(calls):
        await core.submit(spec(f"job-{i:06d}"))
    stats = await _script_stats(store)
    job_id = "job-000000"
    node_id = (await store.execute("HGET", k.job(job_id), "node")).decode()
    await core.result(job_id, node_id=node_id, attempt=1, ok=True, output_json='{"text": "ok"}')
    job_bytes = await _memory_usage(store, k.job(job_id))
    back_to_back = await _back_to_back(store, core, calls, driver_cpus)
    return {
        "nodes_in_pool": nodes,
        "select_reserve_calls": int(stats["calls"]),
        "select_reserve_usec_per_call": round(lean["usec_per_call"], 2),
        "select_reserve_usec_per_call_through_core": round(stats["usec_per_call"], 2),
        "select_reserve_usec_per_call_back_to_back": back_to_back,
        "node_record_bytes": node_bytes,
        "node_share_of_indexes_bytes": round(shared / nodes, 1),
        "retained_job_bytes": job_bytes,
        "floor": floor,
        # the one-at-a-time figure in floor round trips and in no-op script calls (server side)
        "select_reserve_round_trips": round(
            lean["usec_per_call"] / floor["one_at_a_time_us"]["p50"], 3),
        "select_reserve_noop_calls": round(
            lean["usec_per_call"] / floor["server_usec_per_call"], 2),
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
                row = await measure(store, ("127.0.0.1", server.port), size, calls, driver_cpus)
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
    header = (f"{'nodes':>7} {'select+reserve us/call':>23} {'through the core':>17} "
              f"{'back to back':>13} {'node B':>7} {'index B/node':>13} {'job B':>6}")
    print(header)
    for r in rows:
        print(f"{r['nodes_in_pool']:>7} {r['select_reserve_usec_per_call']:>23} "
              f"{r['select_reserve_usec_per_call_through_core']:>17} "
              f"{r['select_reserve_usec_per_call_back_to_back']:>13} "
              f"{r['node_record_bytes']:>7} {r['node_share_of_indexes_bytes']:>13} "
              f"{r['retained_job_bytes']:>6}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
