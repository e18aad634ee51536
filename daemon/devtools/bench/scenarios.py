"""The scenarios of ``schedd bench`` (S1 to S5, CHAOS, SLOWLORIS, SOAK, BROWSE, SDK, PIPE,
ORDER, BLOB, FAIR, RETAIN, PEER) and their scales."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any, Final

import trio

import schedd.devtools.bench.floor as redis_floor
from schedd.devtools.bench.clients import BenchClient, Recorder, open_clients, open_fleet, open_loop
from schedd.devtools.bench.daemon import DaemonProcess, running_daemon
from schedd.devtools.bench.measure import (
    DRAIN_TIMEOUT,
    _proc_memory,
    _proc_times,
    percentiles,
)
from schedd.devtools.bench.options import Options
from schedd.devtools.sim import parse_duration

SCALES: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "full": {
        "S1": {"nodes": 1000, "rate": 500, "seconds": 30, "clients": 4, "warmup": 3.0},
        "S2": {"nodes": 200, "capacity": 8, "seconds": 8,
               "concurrency": [4, 8, 16, 32, 64, 128, 256]},
        "S3": {"nodes": 10000, "idle_seconds": 40, "monitor_seconds": 10, "rate": 500,
               "load_seconds": 20, "clients": 4},
        "S4": {"sizes": [10, 1000, 10000], "calls": 5000},
        # S1's fleet, rate, length and clients, with jobs that take time so that a killed node
        # holds work: "nodes killed during S1"
        "S5": {"nodes": 1000, "rate": 500, "seconds": 30, "clients": 4, "warmup": 3.0,
               "duration": "uniform:0.5,1.5", "kills": 10, "heartbeat_interval": 1.0},
        "CHAOS": {"nodes": 200, "jobs": 5000, "instances": 3, "settle": 120.0},
        "SLOWLORIS": {"nodes": 50, "connections": 2000, "warmup": 2.0, "quiet_seconds": 15,
                      "attack_seconds": 20, "ramp": 3.0, "interval": 0.02},
        # 500 nodes reconnecting ~10 times a second, 245 jobs/s, 1 % failing
        "SOAK": {"nodes": 500, "disconnect_rate": 0.02, "rate": 245, "clients": 1,
                 "fail_rate": 0.01, "warmup": 30.0, "phase_seconds": 60.0, "sample_every": 1.0},
        # a page of jobs from a namespace of 1,000 and of 1,000,000 finished jobs
        "BROWSE": {"sizes": [1000, 1_000_000], "pages": 200, "rounds": 5, "settle": 5.0},
        # serial jobs through an SDK Node and Client, per event loop, the loops in turn
        "SDK": {"jobs": 2000, "warmup": 200, "rounds": 3},
        # serial: a no-op job, a 3-stage pipeline, the same 3 stages chained by the client
        "PIPE": {"rounds": 1000, "warmup": 100},
        # one ordered session of 1,000 utterances, nodes and the client's instance killed
        "ORDER": {"utterances": 1000, "nodes": 8, "capacity": 2, "instances": 3,
                  "in_flight": 32, "job_seconds": (0.01, 0.1), "kill_nodes": 0.25,
                  "gap_timeout": 30.0, "settle": 60.0},
        # 1 MB of audio per job, as an attachment and base64 in the payload, serial jobs
        "BLOB": {"bytes": 1_000_000, "jobs": 100, "warmup": 10, "rounds": 3},
        # fair share by simulation (one node of 4 slots), and a fair dispatch's Redis time
        "FAIR": {"dispatches": 4000, "capacity": 4, "slow_rates": [0.1, 0.4],
                 "principals": [1, 10, 1000], "calls": 5000,
                 "wire": {"nodes": 2, "capacity": 2, "duration": 0.05, "rate": 0.25,
                          "seconds": 10.0}},
        # 100 jobs/s of 100 KB payloads and outputs in compressed time, at the default retention
        # (the phase of 10 principals with a tenth of retain_bytes each, so its plateau shows)
        "RETAIN": {"jobs": 40_000, "kb": 100, "rate": 100.0, "samples": 20,
                   "principals": [1, 10], "multi_retain_bytes": 100 << 20},
        # the same no-op jobs through schedd, BullMQ and Celery on one redis-server, in turn
        "PEER": {"rounds": 3, "serial": 2000, "warmup": 200, "burst": 20_000, "capacity": 50,
                 "celery_concurrency": 2, "timeout": 300.0},
    },
    "tiny": {
        "S1": {"nodes": 50, "rate": 200, "seconds": 2, "clients": 2, "warmup": 0.0},
        "S2": {"nodes": 20, "capacity": 4, "seconds": 1, "concurrency": [4, 16]},
        "S3": {"nodes": 300, "idle_seconds": 3, "monitor_seconds": 1.5, "rate": 100,
               "load_seconds": 1.5, "clients": 2},
        "S4": {"sizes": [10, 200], "calls": 200},
        "S5": {"nodes": 30, "rate": 50, "seconds": 3, "clients": 2, "warmup": 0.0,
               "duration": "uniform:0.3,0.6", "kills": 2, "heartbeat_interval": 0.25},
        "CHAOS": {"nodes": 20, "jobs": 200, "instances": 3, "settle": 60.0},
        # more connections than max_pending_handshakes_per_address: some are refused
        "SLOWLORIS": {"nodes": 5, "connections": 300, "warmup": 0.0, "quiet_seconds": 1,
                      "attack_seconds": 1.5, "ramp": 0.5, "interval": 0.02},
        "SOAK": {"nodes": 20, "disconnect_rate": 0.25, "rate": 50, "clients": 1,
                 "fail_rate": 0.01, "warmup": 1.0, "phase_seconds": 2.0, "sample_every": 0.25},
        "BROWSE": {"sizes": [1000, 20_000], "pages": 20, "rounds": 2, "settle": 0.2},
        "SDK": {"jobs": 50, "warmup": 10, "rounds": 1},
        "PIPE": {"rounds": 30, "warmup": 5},
        "ORDER": {"utterances": 100, "nodes": 4, "capacity": 2, "instances": 2,
                  "in_flight": 16, "job_seconds": (0.005, 0.03), "kill_nodes": 0.25,
                  "gap_timeout": 30.0, "settle": 30.0},
        "BLOB": {"bytes": 1_000_000, "jobs": 5, "warmup": 2, "rounds": 1},
        "FAIR": {"dispatches": 200, "capacity": 4, "slow_rates": [0.4],
                 "principals": [1, 10], "calls": 100,
                 "wire": {"nodes": 1, "capacity": 2, "duration": 0.05, "rate": 0.25,
                          "seconds": 1.0}},
        "RETAIN": {"jobs": 300, "kb": 4, "rate": 100.0, "samples": 6, "principals": [1, 3],
                   "retain_count": 100, "multi_retain_bytes": 40_000},
        "PEER": {"rounds": 1, "serial": 40, "warmup": 10, "burst": 600, "capacity": 50,
                 "celery_concurrency": 2, "timeout": 60.0},
    },
}


async def measure_floor(opt: Options, daemon: DaemonProcess | None) -> dict[str, Any] | None:
    """The Redis floor of the scenario's redis-server, its daemon started and idle (None when
    the bench drives a daemon of its own: ``--url``)."""
    if daemon is None:
        return None
    floor = await redis_floor.measure(daemon.redis.url, opt.scale)
    opt.say(f"  floor: round trip p50 {floor['one_at_a_time_us']['p50']} us, "
            f"{floor['calls_per_s']} calls/s pipelined")
    return floor


def script_calls_per_job(before: dict[str, int], after: dict[str, int], jobs: int
                         ) -> float | None:
    """Script calls (``FCALL`` + ``EVALSHA``) Redis ran between two command counts, per job."""
    if not after or not jobs:
        return None
    return round(sum(after.get(name, 0) - before.get(name, 0)
                     for name in ("fcall", "evalsha")) / jobs, 3)


async def s1_dispatch(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    async with running_daemon(opt.settings, url=opt.url) as daemon:
        floor = await measure_floor(opt, daemon)
        url = opt.url or daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, on_assign=recorder.on_assign), \
                open_clients(url, recorder, p["clients"]) as clients:
            # Steady state: the daemon and the fleet freeze the fleet's objects out of the
            # collector's passes within a second of the last connection (schedd.runtime); that
            # last young-generation pass is a one-time pause S1 leaves out.
            await trio.sleep(p["warmup"])
            pids = {**(daemon.processes() if daemon is not None else {}), "bench": os.getpid()}
            commands0 = await daemon.command_counts() if daemon is not None else {}
            cpu0 = {name: _proc_times(pid) for name, pid in pids.items()}
            await open_loop(clients, recorder, p["rate"], p["seconds"], opt.say, "S1")
            cpu1 = {name: _proc_times(pid) for name, pid in pids.items()}
            commands1 = await daemon.command_counts() if daemon is not None else {}
            await recorder.drain()
        jobs = len(recorder.jobs)
        result = {"nodes": p["nodes"], "rate": p["rate"], "seconds": p["seconds"],
                  "warmup_s": p["warmup"],
                  **recorder.summary(list(recorder.jobs.values())),
                  # what a job costs, whatever the host's speed did to the latencies: the CPU
                  # each process spent during the open loop, and the script calls Redis ran
                  "cpu_us_per_job": {name: round(1e6 * (cpu1[name] - cpu0[name]) / jobs, 1)
                                     for name in pids},
                  "script_calls_per_job": script_calls_per_job(commands0, commands1, jobs),
                  "errors": recorder.errors[:5], "error_count": len(recorder.errors)}
    result["floor"] = floor
    result["ratios"] = redis_floor.dispatch_ratios(result, floor)
    return result


async def s2_throughput(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    levels = []
    async with running_daemon(opt.settings, url=opt.url) as daemon:
        floor = await measure_floor(opt, daemon)
        url = opt.url or daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, capacity=p["capacity"],
                              on_assign=recorder.on_assign):
            commands0 = await daemon.command_counts() if daemon is not None else {}
            for concurrency in p["concurrency"]:
                connections = min(concurrency, 8)
                async with open_clients(url, recorder, connections) as clients:
                    start = time.perf_counter()
                    stop_at = start + p["seconds"]

                    async def worker(client: BenchClient, stop_at: float = stop_at) -> None:
                        while time.perf_counter() < stop_at:
                            record = await client.submit(recorder.new_id("S2"), waiter=True)
                            assert record.event is not None
                            await record.event.wait()

                    async with trio.open_nursery() as nursery:
                        for i in range(concurrency):
                            nursery.start_soon(worker, clients[i % connections])
                    elapsed = time.perf_counter() - start
                    records = recorder.window(start, stop_at)
                    summary = recorder.summary(records)
                    level = {"concurrency": concurrency, "connections": connections,
                             "jobs_per_s": round(summary["done"] / elapsed, 1), **summary}
                    levels.append(level)
                    p99 = summary["submit_to_done_ms"].get("p99", math.inf)
                    opt.say(f"  S2: concurrency {concurrency}: {level['jobs_per_s']} jobs/s, "
                            f"p99 {p99} ms")
                    if p99 > 50:
                        break
            commands1 = await daemon.command_counts() if daemon is not None else {}
        good = [lv for lv in levels if lv["submit_to_done_ms"].get("p99", math.inf) <= 50]
        best = max(good or levels, key=lambda lv: lv["jobs_per_s"])
        total = recorder.summary(list(recorder.jobs.values()))
    per_job = script_calls_per_job(commands0, commands1, total["submitted"])
    return {"best_jobs_per_s": best["jobs_per_s"], "best_concurrency": best["concurrency"],
            "best_p99_ms": best["submit_to_done_ms"].get("p99"), "levels": levels,
            "submitted": total["submitted"], "done": total["done"], "lost": total["lost"],
            "script_calls_per_job": per_job, "floor": floor,
            "ratios": {"best_jobs_per_s_of_floor": redis_floor.jobs_fraction(
                best["jobs_per_s"], per_job, floor)},
            "errors": recorder.errors[:5], "error_count": len(recorder.errors)}


async def s3_heartbeats(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    from schedd.store.scripts import Scripts

    if opt.url is not None:
        raise ValueError("S3 measures the daemon's process: it needs its own daemon (no --url)")
    script = Scripts()["heartbeat_batch"]
    async with running_daemon(opt.settings) as daemon:
        floor = await measure_floor(opt, daemon)
        # the store client (and the redis package under it) is imported here, not inside the
        # heartbeat window, where script_holds is the first to use it (the import would take
        # this process's time inside the measured window)
        await daemon.redis_command("PING")
        url = daemon.url(opt.transport)
        recorder = Recorder()
        started = time.perf_counter()
        async with open_fleet(url, p["nodes"], opt.say, on_assign=recorder.on_assign) as fleet:
            registered_s = time.perf_counter() - started
            settle = min(5.0, p["idle_seconds"] / 4)
            await trio.sleep(settle)
            cpu0, t0 = _proc_times(daemon.pid), time.perf_counter()
            own0 = _proc_times(os.getpid())
            beats0 = fleet.stats.heartbeats
            calls = await daemon.count_script_calls(
                (script.function, script.sha), p["monitor_seconds"])
            monitor_s = p["monitor_seconds"]
            rest = max(0.0, p["idle_seconds"] - settle - monitor_s)
            holds = await daemon.script_holds((script.function, script.sha), rest)
            cpu1, t1 = _proc_times(daemon.pid), time.perf_counter()
            own1 = _proc_times(os.getpid())
            beats = fleet.stats.heartbeats - beats0
            memory = _proc_memory(daemon.pid)
            opt.say(f"  S3: heartbeats only: daemon CPU {100 * (cpu1 - cpu0) / (t1 - t0):.1f} %, "
                    f"RSS {memory.get('VmRSS', 0) / 1024:.0f} MB")
            async with open_clients(url, recorder, p["clients"]) as clients:
                cpu2, t2 = _proc_times(daemon.pid), time.perf_counter()
                own2 = _proc_times(os.getpid())
                await open_loop(clients, recorder, p["rate"], p["load_seconds"], opt.say, "S3")
                cpu3, t3 = _proc_times(daemon.pid), time.perf_counter()
                own3 = _proc_times(os.getpid())
                await recorder.drain()
            memory_load = _proc_memory(daemon.pid)
            stats = fleet.stats.snapshot()
    summary = recorder.summary(list(recorder.jobs.values()))
    return {
        "nodes": p["nodes"], "registration_s": round(registered_s, 2),
        "heartbeats_per_s": round(beats / (t1 - t0), 1),
        "daemon_cpu_pct_heartbeats": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "daemon_rss_mb": round(memory.get("VmRSS", 0) / 1024, 1),
        "heartbeat_script_calls_per_s": round(calls / monitor_s, 2),
        # Redis runs nothing else while a call runs: what a dispatch may wait behind
        "heartbeat_call_ms": percentiles(holds),
        "redis_heartbeat_ms_per_s": round(1000 * sum(holds) / rest, 2) if rest else None,
        "daemon_cpu_pct_with_jobs": round(100 * (cpu3 - cpu2) / (t3 - t2), 1),
        # this process: the simulated fleet and the clients (the other side of the same cores)
        "bench_cpu_pct_heartbeats": round(100 * (own1 - own0) / (t1 - t0), 1),
        "bench_cpu_pct_with_jobs": round(100 * (own3 - own2) / (t3 - t2), 1),
        "daemon_rss_mb_with_jobs": round(memory_load.get("VmRSS", 0) / 1024, 1),
        "daemon_rss_peak_mb": round(memory_load.get("VmHWM", 0) / 1024, 1),
        "job_rate": p["rate"], **summary,
        "node_errors": stats["errors"], "reconnects": stats["reconnects"],
        "errors": recorder.errors[:5], "error_count": len(recorder.errors), "floor": floor,
        "ratios": redis_floor.dispatch_ratios(summary, floor),
    }


async def s4_script_cost(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    from schedd.devtools.script_cost import run as script_cost

    rows = await script_cost(p["sizes"], p["calls"])
    return {"rows": rows,
            "usec_per_call": {str(r["nodes_in_pool"]): r["select_reserve_usec_per_call"]
                              for r in rows},
            "usec_per_call_through_core": {
                str(r["nodes_in_pool"]): r["select_reserve_usec_per_call_through_core"]
                for r in rows},
            "usec_per_call_back_to_back": {
                str(r["nodes_in_pool"]): r["select_reserve_usec_per_call_back_to_back"]
                for r in rows},
            "ratios": {"usec_per_call_round_trips": {
                str(r["nodes_in_pool"]): r["select_reserve_round_trips"] for r in rows},
                "usec_per_call_noop_calls": {
                str(r["nodes_in_pool"]): r["select_reserve_noop_calls"] for r in rows}}}


def held_jobs_after_kills(recorder: Recorder, kills: Sequence[dict[str, Any]]
                          ) -> tuple[dict[str, Any], list[float]]:
    """What became of the jobs the killed nodes held, and each reassignment's delay (s).

    A held job is reassigned (a later attempt reached another node), finished before the kill
    (the killed node's own attempt finished it: its result had left when the kill came, the
    node's send written, its task not yet resumed), or not reassigned: the failure."""
    delays: list[float] = []
    unreassigned = finished_before = held_jobs = 0
    for kill in kills:
        for job_id, attempt in kill["held"].items():
            held_jobs += 1
            record = recorder.jobs.get(job_id)
            later = [t for t, a, node in (record.reassigned if record else ())
                     if a > attempt and node != kill["node"]]
            if later:
                delays.append(min(later) - kill["at"])
            elif record is not None and record.done_at and record.done_node == kill["node"] \
                    and record.attempts == attempt:
                finished_before += 1
            else:
                unreassigned += 1
    return {"nodes_killed": len(kills), "jobs_held": held_jobs, "not_reassigned": unreassigned,
            "finished_before_kill": finished_before,
            "kill_to_reassign_ms": percentiles(delays)}, delays


async def s5_failover(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    interval = p["heartbeat_interval"]
    kills: list[dict[str, Any]] = []
    async with running_daemon(opt.settings, heartbeat_interval=interval, url=opt.url) as daemon:
        url = opt.url or daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, duration=parse_duration(p["duration"]),
                              on_assign=recorder.on_assign) as fleet, \
                open_clients(url, recorder, p["clients"]) as clients:
            await trio.sleep(p["warmup"])  # as S1: past the fleet's last collector freeze

            async def killer() -> None:
                await trio.sleep(p["seconds"] / 3)
                for how in ("drop", "silent"):
                    # spread over the fleet, so over the beat phases (a node's phase follows its
                    # place in the fleet): the first nodes holding jobs would all beat together
                    holding = [n for n in fleet.nodes if n.running and not n.killed]
                    victims = holding[::max(1, len(holding) // p["kills"])][:p["kills"]]
                    for node in victims:
                        held = dict(node.running)
                        fleet.kill(node, how)
                        kills.append({"how": how, "node": node.node_id, "at": time.perf_counter(),
                                      "held": held})
                    opt.say(f"  S5: {how}: killed {len(victims)} nodes holding "
                            f"{sum(len(k['held']) for k in kills if k['how'] == how)} jobs")
                    await trio.sleep(p["seconds"] / 3)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                await open_loop(clients, recorder, p["rate"], p["seconds"], opt.say, "S5")
            await recorder.drain(DRAIN_TIMEOUT + 10 * interval)
    out: dict[str, Any] = {"nodes": p["nodes"], "rate": p["rate"], "seconds": p["seconds"],
                           "warmup_s": p["warmup"], "heartbeat_interval_s": interval,
                           **recorder.summary(list(recorder.jobs.values()))}
    for how in ("drop", "silent"):
        out[how], delays = held_jobs_after_kills(recorder, [k for k in kills if k["how"] == how])
        if delays:
            out[how]["kill_to_reassign_intervals_max"] = round(max(delays) / interval, 2)
    out["errors"] = recorder.errors[:5]
    out["error_count"] = len(recorder.errors)
    return out


async def chaos(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scale-out chaos run (schedd.devtools.chaos) on one real redis-server."""
    from schedd.devtools.chaos import ChaosSettings, redis_topology, run_chaos

    settings = ChaosSettings(nodes=p["nodes"], jobs=p["jobs"], instances=p["instances"],
                             settle=p["settle"])
    with redis_topology("single") as (url, topology):
        report = await run_chaos(url, settings, topology=topology, topology_name="single")
    for line in report.lines():
        opt.say(f"  CHAOS {line}")
    return {"accepted": report.accepted, "done_messages": report.done_messages,
            "lost": report.lost, "duplicate_done": report.jobs_with_duplicate_done,
            "stale_slots": report.stale_slots, "jobs_per_second": round(report.jobs_per_second),
            "ok": report.ok, "report": report.lines()}


async def slowloris(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """A probe client's latency, quiet and under a slowloris (schedd.devtools.slowloris)."""
    from schedd.devtools.slowloris import run

    return await run(opt, p)


async def soak(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The daemon's RSS per reconnection and per job (schedd.devtools.soak)."""
    from schedd.devtools.soak import run_soak

    return await run_soak(opt, p)


async def browse(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """A page of jobs from a small and a large namespace (schedd.devtools.browse_cost)."""
    from schedd.devtools.browse_cost import run

    return await run(list(p["sizes"]), int(p["pages"]), int(p["rounds"]), float(p["settle"]),
                     opt.say)


async def sdk(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The SDK's serial round trip under each event loop (schedd.devtools.sdk_bench)."""
    from schedd.devtools.sdk_bench import run_sdk

    return await run_sdk(opt, p)


async def pipe(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """A 3-stage pipeline against one job and a client's chain (schedd.devtools.pipe_bench)."""
    from schedd.devtools.pipe_bench import run_pipe

    return await run_pipe(opt, p)


async def order(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """One ordered session under node and instance kills (schedd.devtools.order_bench)."""
    from schedd.devtools.order_bench import run_order

    report = await run_order(p, opt.say)
    return {"utterances": report.utterances, "accepted": report.accepted,
            "received": report.received, "done": report.done, "failed_jobs": report.failed,
            "skipped": report.skipped, "out_of_order": report.out_of_order,
            "duplicates": report.duplicates, "lost": report.lost,
            "seconds": round(report.elapsed, 2), "ok": report.ok, "report": report.lines()}


async def blob(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """Audio as an attachment against base64 in the payload (schedd.devtools.blob_bench)."""
    from schedd.devtools.blob_bench import run_blob

    return await run_blob(opt, p)


async def fair(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """Fair share shares and latencies, and a fair dispatch's cost (schedd.devtools.fair_bench)."""
    from schedd.devtools.fair_bench import run

    return await run(p, opt.say)


async def retain(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """Redis memory of finished jobs along a compressed hour (schedd.devtools.retention_cost)."""
    from schedd.devtools.retention_cost import run_hours

    return await run_hours(p, opt.say)


async def peer(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """schedd, BullMQ and Celery, the same workload in turn (schedd.devtools.peer_bench)."""
    from schedd.devtools.peer_bench import run_peer

    return await run_peer(opt, p)


_RUNNERS: Final = {"S1": s1_dispatch, "S2": s2_throughput, "S3": s3_heartbeats,
                   "S4": s4_script_cost, "S5": s5_failover, "CHAOS": chaos,
                   "SLOWLORIS": slowloris, "SOAK": soak, "BROWSE": browse,
                   "SDK": sdk, "PIPE": pipe,
                   "ORDER": order, "BLOB": blob,
                   "FAIR": fair, "RETAIN": retain, "PEER": peer}
