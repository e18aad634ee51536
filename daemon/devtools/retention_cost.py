"""What finished jobs hold in Redis under the retention rules, and what a long run comes to.

Starts its own ``redis-server`` on a free port (never touches another Redis). Run::

    python -m schedd.devtools.retention_cost [--jobs 400] [--kb 100] [--rate 100]
                                             [--hours 1] [--json FILE]
    python -m schedd.devtools.retention_cost --hour [--jobs 40000] [--principals 1,10]

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

``--hour`` (and ``schedd bench --scenarios RETAIN``) measures the curve instead of extrapolating
it: :func:`run_hour` drives ``--jobs`` jobs through the same scripts as a run of ``--rate``
jobs/s in compressed time (job ``i`` stands for the one finished at virtual second
``i / rate``; the scripts run back to back), sampling ``used_memory`` and the retained jobs as
it goes, so the plateau the per-principal bounds hold is visible. Time-based expiry is honest
in both clocks: the scripts read Redis's own clock, so a job's retention runs from its real
finish and the reaper would remove nothing during a run shorter than ``retention``; in virtual
time a job finished at second ``t`` expires at ``t + retention``, after the hour when
``retention`` is 3600 s. Only the count and bytes bounds remove finished jobs, and the report
gives both clocks' count of jobs due (zero while the virtual run is not longer than retention).
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

__all__ = ["extrapolate", "main", "run_hour", "run_hours", "run_phase", "table_rows"]


async def _used(store: Store) -> int:
    info = await store.execute("INFO", "memory")
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO memory gave no used_memory")


async def _fresh_core(store: Store, settings: dict[str, Any]) -> Core:
    """A core on an emptied namespace with one node of one slot, alive through the whole
    phase without heartbeats."""
    await store.execute("FLUSHALL")
    core = Core(store, CoreSettings(namespace="rc", instance="rc-1", heartbeat_interval=600.0,
                                    **settings))
    await core.start()
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    return core


def _bodies(kb: int) -> tuple[str, str]:
    """A job's ``kb`` KB payload and output, as JSON."""
    return (orjson.dumps({"audio": "a" * (kb * 1024)}).decode(),
            orjson.dumps({"audio": "b" * (kb * 1024)}).decode())


async def _one_job(core: Core, job_id: str, principal: str, payload: str, output: str) -> None:
    """Submit the job (it is assigned at once to the free node) and finish it done."""
    sub = await core.submit(JobSpec(pools=("p",), payload_json=payload, job_id=job_id),
                            principal=principal)
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True, output_json=output)


async def run_phase(store: Store, jobs: int, kb: int, **settings: Any) -> dict[str, Any]:
    """Run ``jobs`` jobs to done on an empty namespace; memory and retained jobs after."""
    core = await _fresh_core(store, settings)
    payload, output = _bodies(kb)
    before = await _used(store)
    for i in range(jobs):
        await _one_job(core, f"j{i:07d}", "tenant", payload, output)
    after = await _used(store)
    retained = int(await store.execute("ZCARD", core.keys.jobs_in("done")))
    return {
        "jobs": jobs,
        "retained": retained,
        "used_memory_delta": after - before,
        "bytes_per_retained_job": (after - before) // max(retained, 1),
    }


async def run_hour(store: Store, jobs: int, kb: int, *, principals: int = 1, rate: float = 100.0,
                   samples: int = 20, **settings: Any) -> dict[str, Any]:
    """``jobs`` jobs to done on an empty namespace, round robin over ``principals``, as a run
    of ``rate`` jobs/s in compressed time: ``used_memory`` and the retained jobs sampled
    ``samples`` times along the way, and what time-based expiry had due at the end."""
    core = await _fresh_core(store, settings)
    s = core.settings
    payload, output = _bodies(kb)
    before = await _used(store)
    every = max(1, jobs // max(samples, 1))
    curve: list[dict[str, Any]] = []
    for i in range(1, jobs + 1):
        await _one_job(core, f"j{i:07d}", f"t{i % principals:04d}", payload, output)
        if i % every == 0 or i == jobs:
            used = await _used(store)
            curve.append({"jobs_done": i, "virtual_s": round(i / rate, 1),
                          "retained": int(await store.execute("ZCARD", core.keys.jobs_in("done"))),
                          "used_memory": used, "delta": used - before})
    now_ms = await _now_ms(store)
    due_real = int(await store.execute("ZCOUNT", core.keys.gc, "-inf", str(now_ms)))
    per_principal = [int(await store.execute("ZCARD", core.keys.ended_of(f"t{n:04d}")))
                     for n in range(principals)]
    last = curve[-1]
    # the first sample holding as many jobs as the last: the bound was reached there
    at_bound = next(c for c in curve if c["retained"] == last["retained"])
    return {
        "jobs": jobs, "principals": principals, "payload_kb": kb, "output_kb": kb,
        "rate_jobs_per_s": rate, "virtual_seconds": round(jobs / rate, 1),
        "retention_s": s.retention, "retain_count": s.retain_count, "retain_bytes": s.retain_bytes,
        "curve": curve,
        "retained": last["retained"], "retained_per_principal": per_principal,
        "plateau_used_memory_delta": last["delta"],
        "bytes_per_retained_job": last["delta"] // max(last["retained"], 1),
        "bound_reached_at": at_bound["jobs_done"],
        "growth_after_bound": round(last["delta"] / max(at_bound["delta"], 1), 4),
        # time-based expiry: due by Redis's clock at the end, and by the virtual clock
        "expired_by_time_real": due_real,
        "expired_by_time_virtual": max(0, jobs - int(rate * s.retention)),
    }


def _output_bytes(kb: int) -> int:
    """The bytes of a job's ``kb`` KB output as stored (what ``retain_bytes`` counts of it)."""
    return len(_bodies(kb)[1])


async def _now_ms(store: Store) -> int:
    secs, usecs = await store.execute("TIME")
    return int(secs) * 1000 + int(usecs) // 1000


def extrapolate(per_job: int, rate: float, hours: float, s: CoreSettings,
                counted: int | None = None) -> dict[str, Any]:
    """The retained jobs and bytes of ``rate`` jobs/s over ``hours`` from one principal.

    ``per_job``: the Redis memory of a retained job; ``counted``: the bytes of it that count
    against ``retain_bytes`` (its output, error and kept payload and attachments, not Redis's
    own overhead; ``per_job`` when not given)."""
    finished = int(rate * hours * 3600)
    by_time = min(finished, int(rate * s.retention))
    counted = per_job if counted is None else counted
    by_bounds = min(s.retain_count, s.retain_bytes // max(counted, 1))
    kept = min(by_time, by_bounds)
    return {
        "rate_jobs_per_s": rate, "hours": hours, "finished": finished,
        "retained_by_retention_only": by_time,
        "bytes_by_retention_only": by_time * per_job,
        "retained_per_principal": kept, "bytes_per_principal": kept * per_job,
    }


async def run_hours(p: dict[str, Any], say: Any = print) -> dict[str, Any]:
    """:func:`run_hour` for each count of ``p["principals"]`` on one throw-away redis-server.

    ``p``: jobs, kb, rate, samples, principals (a list); optional retain_count / retain_bytes
    (every phase) and multi_retain_bytes (the phases of more than one principal, so that their
    plateau shows in a run of ``jobs`` jobs: the bound is per principal, the total that many
    times it)."""
    base = {k: p[k] for k in ("retain_count", "retain_bytes") if k in p}
    out: dict[str, Any] = {"phases": []}
    with RedisServer() as server:
        async with open_store(server.url) as store:
            for n in p["principals"]:
                settings = dict(base)
                if n > 1 and "multi_retain_bytes" in p:
                    settings["retain_bytes"] = int(p["multi_retain_bytes"])
                say(f"  RETAIN: {p['jobs']} jobs of {p['kb']} KB, {n} principal(s)")
                phase = await run_hour(store, int(p["jobs"]), int(p["kb"]), principals=int(n),
                                       rate=float(p["rate"]), samples=int(p["samples"]),
                                       **settings)
                out["phases"].append(phase)
    return out


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for ph in r["phases"]:
        head = (f"{ph['principals']} principal(s), {ph['jobs']} jobs "
                f"({ph['virtual_seconds']:g} s at {ph['rate_jobs_per_s']:g}/s)")
        curve = ", ".join(f"{c['jobs_done']}: {c['delta'] / 1e6:.0f} MB" for c in ph["curve"]
                          [:: max(1, len(ph["curve"]) // 5)])
        rows += [("RETAIN", f"{head}: used_memory by jobs done", curve),
                 ("RETAIN", f"{head}: plateau (retained, memory, per job)",
                  f"{ph['retained']} jobs, {ph['plateau_used_memory_delta'] / 1e6:.0f} MB, "
                  f"{ph['bytes_per_retained_job']} B; last / at the bound "
                  f"({ph['bound_reached_at']} jobs): {ph['growth_after_bound']} "
                  "(target <= 1.01); expired by time: "
                  f"{ph['expired_by_time_real']} (virtual {ph['expired_by_time_virtual']})")]
    return rows


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    if args.hour:
        p = {"jobs": args.jobs, "kb": args.kb, "rate": args.rate, "samples": args.samples,
             "principals": [int(n) for n in args.principals.split(",")]}
        if args.multi_retain_bytes is not None:
            p["multi_retain_bytes"] = args.multi_retain_bytes
        return await run_hours(p)
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
                                    CoreSettings(), counted=_output_bytes(args.kb)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--kb", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--hour", action="store_true",
                        help="measure the memory curve of --jobs jobs at --rate (run_hour)")
    parser.add_argument("--principals", default="1", help="--hour: principal counts, e.g. 1,10")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--multi-retain-bytes", type=int, default=None,
                        help="--hour: retain_bytes of the phases of more than one principal")
    args = parser.parse_args(argv)
    report = trio.run(_main, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
