"""What finished jobs hold in Redis under the retention rules, and what a long run comes to.

Starts its own ``redis-server`` on a free port (never touches another Redis). Run::

    python -m schedd.devtools.retention_cost [--jobs 400] [--kb 100] [--rate 100]
                                             [--hours 1] [--json FILE]

Each phase empties the namespace, then runs ``--jobs`` jobs of one principal through the core's
own scripts (``job_submit`` with a ``--kb`` KB payload, ``job_result`` with a ``--kb`` KB output)
and reads ``INFO memory`` ``used_memory`` before and after and how many jobs are retained:

* ``default``: the default settings (the payload of a job that ended done is dropped);
* ``keep_payload``: the same with every payload kept, for comparison;
* ``bounded``: ``retain_count`` set to a quarter of ``--jobs``: the retained jobs stop there.

From the bytes per retained job of ``default`` it extrapolates a run of ``--rate`` jobs/s for
``--hours`` hours at the default ``retention`` (every job finished within the last retention is
kept, up to the per-principal bounds ``retain_count`` and ``retain_bytes``): the measured run is
shorter than the extrapolated one, and the report says so.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import orjson
import trio

from schedd.core import Core, CoreSettings, JobSpec
from schedd.devtools.redis_process import RedisServer
from schedd.store import open_store
from schedd.store.base import Store

__all__ = ["extrapolate", "main", "run_phase"]


async def _used(store: Store) -> int:
    info = await store.execute("INFO", "memory")
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO memory gave no used_memory")


async def run_phase(store: Store, jobs: int, kb: int, **settings: Any) -> dict[str, Any]:
    """Run ``jobs`` jobs to done on an empty namespace; memory and retained jobs after."""
    await store.execute("FLUSHALL")
    # one node, alive through the whole phase without heartbeats
    core = Core(store, CoreSettings(namespace="rc", instance="rc-1", heartbeat_interval=600.0,
                                    **settings))
    await core.start()
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    payload = orjson.dumps({"audio": "a" * (kb * 1024)}).decode()
    output = orjson.dumps({"audio": "b" * (kb * 1024)}).decode()
    before = await _used(store)
    for i in range(jobs):
        sub = await core.submit(JobSpec(pools=("p",), payload_json=payload, job_id=f"j{i:07d}"),
                                principal="tenant")
        await core.result(sub.job_id, node_id="n1", attempt=1, ok=True, output_json=output)
    after = await _used(store)
    retained = int(await store.execute("ZCARD", core.keys.jobs))
    return {
        "jobs": jobs,
        "retained": retained,
        "used_memory_delta": after - before,
        "bytes_per_retained_job": (after - before) // max(retained, 1),
    }


def extrapolate(per_job: int, rate: float, hours: float, s: CoreSettings) -> dict[str, Any]:
    """The retained jobs and bytes of ``rate`` jobs/s over ``hours`` from one principal."""
    finished = int(rate * hours * 3600)
    by_time = min(finished, int(rate * s.retention))
    by_bounds = min(s.retain_count, s.retain_bytes // max(per_job, 1))
    kept = min(by_time, by_bounds)
    return {
        "rate_jobs_per_s": rate, "hours": hours, "finished": finished,
        "retained_by_retention_only": by_time,
        "bytes_by_retention_only": by_time * per_job,
        "retained_per_principal": kept, "bytes_per_principal": kept * per_job,
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    server = RedisServer().start()
    try:
        async with open_store(server.url) as store:
            default = await run_phase(store, args.jobs, args.kb)
            kept = await run_phase(store, args.jobs, args.kb, keep_payload=True)
            bounded = await run_phase(store, args.jobs, args.kb,
                                      retain_count=max(1, args.jobs // 4))
    finally:
        server.stop()
    return {
        "payload_kb": args.kb, "output_kb": args.kb,
        "default": default, "keep_payload": kept, "bounded": bounded,
        "extrapolated": extrapolate(default["bytes_per_retained_job"], args.rate, args.hours,
                                    CoreSettings()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--kb", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = trio.run(_main, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
