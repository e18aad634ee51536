"""The Redis commands of one job's life: each script call, the commands it ran inside Redis and
its time there (``INFO commandstats`` diffs around the call, ``CONFIG RESETSTAT`` before it).

Starts its own ``redis-server`` on a free port (never touches another Redis). Run::

    python -m schedd.devtools.job_commands [--burst 200] [--json FILE]

Paths, each through the core (``Core``) as the daemon calls it, one node of one pool:

* ``submit placed``: a submit that finds a free slot (``job_submit``);
* ``accept+result``: the node's accept and result in one call (``job_result``, accepted:
  docs/decisions/0012), with nothing queued;
* ``submit queued``: a submit that finds no free slot and queues;
* ``accept+result, feeds``: the result that frees the slot the queued job then takes (its
  dispatch, ``feed_node``, runs in that call);
* ``removal (gc)``: the ``reap`` pass that removes one finished job past its retention, less the
  same pass with nothing to remove;
* ``heartbeat_batch``: one flush window's call with one node's beat, and with 100 nodes' beats
  (the call's cost does not grow per node until 500);
* ``one at a time``: ``--burst`` jobs submitted one after another, each placed at once (one
  node with a slot for each), then each answered (accept+result) one after another: the
  commands and time per call of each kind (steadier µs than one call's) and per job, with the
  bytes the server appended to its AOF per job (what the job's writes cost the persistence and
  the replication stream: a script's writes are propagated one command each);
* ``burst``: ``--burst`` jobs submitted together on 4 nodes of 8 slots (most of them queue),
  every assignment answered with one accept+result call: the commands of the whole burst per
  job.

The commands a script runs are the server's own counts (``cmdstat_*``, which count commands
called from scripts too), less the script call itself (``fcall``); the µs are the script
calls' ``usec`` (which include the commands they ran). A busy host makes the µs noisy: they are
indicative; the command counts are exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from schedd.core import AssignDelivery, Core, CoreSettings, JobSpec
from schedd.devtools.redis_process import RedisServer, command_stats
from schedd.store import open_store
from schedd.store.base import Store

#: commands of the measurement itself, not of the scripts
_OWN = frozenset({"fcall", "evalsha", "config", "info"})


class Step:
    """The commands (name -> calls) and the script time of one or more script calls."""

    def __init__(self, commands: Counter[str], usec: float, calls: int) -> None:
        self.commands = commands
        self.usec = usec
        self.calls = calls

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    def row(self, path: str, per: int = 1) -> dict[str, Any]:
        return {
            "path": path,
            "commands": round(self.total / per, 1),
            "usec": round(self.usec / per, 1),
            "script_calls": round(self.calls / per, 2),
            "by_command": {k: round(v / per, 2) for k, v in self.commands.most_common()},
        }

    def __sub__(self, other: Step) -> Step:
        left = Counter(self.commands)
        left.subtract(other.commands)
        return Step(+left, self.usec - other.usec, self.calls - other.calls)


async def measure(store: Store, action: Callable[[], Awaitable[Any]]) -> Step:
    """The commands ``action`` made Redis run (scripts' inner commands by name)."""
    await store.execute("CONFIG", "RESETSTAT")
    await action()
    stats = command_stats(await store.execute("INFO", "commandstats"))
    script = stats.get("fcall") or stats.get("evalsha") or {"calls": 0.0, "usec": 0.0}
    commands = Counter({name.upper(): int(s["calls"]) for name, s in stats.items()
                        if name not in _OWN and "|" not in name})
    return Step(commands, script["usec"], int(script["calls"]))


class _Fleet:
    """A core whose assignments are recorded, to be answered by the test's own node."""

    def __init__(self, store: Store, namespace: str) -> None:
        self.assigned: list[AssignDelivery] = []
        self.core = Core(store, CoreSettings(namespace=namespace, instance="cost-1",
                                             heartbeat_interval=600, retention=0.0),
                         on_delivery=self._delivered)

    def _delivered(self, delivery: object) -> None:
        if isinstance(delivery, AssignDelivery):
            self.assigned.append(delivery)

    async def finish(self, a: AssignDelivery) -> None:
        await self.core.result(a.job_id, node_id=a.node_id, attempt=a.attempt, ok=True,
                               output_json='{"text": "ok"}', accepted=True)


def _spec(job_id: str) -> JobSpec:
    return JobSpec(pools=("p",), job_id=job_id, payload_json='{"n": 1}')


async def one_job(store: Store) -> list[dict[str, Any]]:
    """The single-job paths (module docstring), one row each."""
    await store.execute("FLUSHALL")
    fleet = _Fleet(store, "cost")
    core = fleet.core
    await core.start()
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    rows = []
    rows.append((await measure(store, lambda: core.submit(_spec("j1")))).row("submit placed"))
    first = fleet.assigned.pop()
    rows.append((await measure(store, lambda: core.submit(_spec("j2")))).row("submit queued"))
    rows.append((await measure(store, lambda: fleet.finish(first))).row("accept+result, feeds"))
    fed = fleet.assigned.pop()
    rows.append((await measure(store, lambda: fleet.finish(fed))).row("accept+result"))
    await trio.sleep(0.01)  # both jobs are past their retention (0 s)
    removing = await measure(store, core.reap)
    idle = await measure(store, core.reap)
    rows.append((removing - idle).row("removal (gc)", per=2))
    beat = [("n1", 1, 0.0, 0)]
    rows.append((await measure(store, lambda: core.heartbeat_batch(beat))).row(
        "heartbeat_batch, 1 node"))
    for i in range(2, 101):
        await core.register_node(node_id=f"n{i}", capacity=1, pools=["p"])
    beats = [(f"n{i}", i, 0.5, 1) for i in range(1, 101)]
    rows.append((await measure(store, lambda: core.heartbeat_batch(beats))).row(
        "heartbeat_batch, 100 nodes"))
    return rows


async def one_at_a_time(store: Store, jobs: int) -> list[dict[str, Any]]:
    """``jobs`` submits one after another (each placed), then their accept+results: a row per
    call of each kind, and a row per job with its AOF bytes."""
    await store.execute("FLUSHALL")
    fleet = _Fleet(store, "serial")
    core = fleet.core
    await core.start()
    await core.register_node(node_id="s1", capacity=jobs, pools=["p"])

    async def submits() -> None:
        for i in range(jobs):
            await core.submit(_spec(f"serial-{i:05d}"))

    async def results() -> None:
        for a in list(fleet.assigned):
            await fleet.finish(a)

    before = await _aof_size(store)
    submitted = await measure(store, submits)
    finished = await measure(store, results)
    after = await _aof_size(store)
    per_job = Step(submitted.commands + finished.commands, submitted.usec + finished.usec,
                   submitted.calls + finished.calls).row(f"{jobs} one at a time, per job",
                                                         per=jobs)
    if before is not None and after is not None:
        per_job["aof_bytes"] = round((after - before) / jobs, 1)
    return [submitted.row(f"{jobs} submits placed, per call", per=jobs),
            finished.row(f"{jobs} accept+results, per call", per=jobs), per_job]


async def _aof_size(store: Store) -> int | None:
    """The AOF's size (``aof_current_size``), None when the server keeps none."""
    for line in (await store.execute("INFO", "persistence")).decode().splitlines():
        if line.startswith("aof_current_size:"):
            return int(line.split(":", 1)[1])
    return None


async def burst(store: Store, jobs: int) -> dict[str, Any]:
    """``jobs`` submitted together on 4 nodes of 8 slots, each assignment answered at once."""
    await store.execute("FLUSHALL")
    fleet = _Fleet(store, "burst")
    core = fleet.core
    await core.start()
    for i in range(4):
        await core.register_node(node_id=f"b{i}", capacity=8, pools=["p"])

    async def life() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(jobs):
                nursery.start_soon(core.submit, _spec(f"burst-{i:05d}"))
        done = 0
        while fleet.assigned:
            batch, fleet.assigned[:] = list(fleet.assigned), []
            async with trio.open_nursery() as nursery:
                for a in batch:
                    nursery.start_soon(fleet.finish, a)
            done += len(batch)
        if done != jobs:
            raise RuntimeError(f"{done} of {jobs} jobs finished")

    return (await measure(store, life)).row(f"burst of {jobs}, per job", per=jobs)


async def run(jobs: int) -> list[dict[str, Any]]:
    # an AOF written at once (appendfsync no: no disk wait in the measured time)
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "no"]) as server:
        async with open_store(server.url) as store:
            rows = await one_job(store)
            rows += await one_at_a_time(store, jobs)
            rows.append(await burst(store, jobs))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'path':<28} {'commands':>8} {'usec':>7}  by command"]
    for r in rows:
        by = ", ".join(f"{k} {v:g}" for k, v in r["by_command"].items())
        aof = f" ({r['aof_bytes']:g} AOF bytes)" if "aof_bytes" in r else ""
        lines.append(f"{r['path']:<28} {r['commands']:>8g} {r['usec']:>7g}  {by}{aof}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=200,
                        help="jobs in the burst, and one at a time")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    rows = trio.run(run, args.burst)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
