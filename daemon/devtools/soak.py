"""``schedd bench --scenarios SOAK``: the daemon's memory under reconnections and jobs.

Rules of this module:

* Parameters: ``SCALES[scale]["SOAK"]`` in :mod:`schedd.devtools.bench.scenarios`.
* One daemon and its redis-server (the bench's :func:`~schedd.devtools.bench.running_daemon`),
  a simulated fleet (:mod:`schedd.devtools.sim`) that drops and re-opens connections at a
  rate, and the bench's lean clients submitting no-op jobs, of which a fraction fail
  (``fail_rate``).
* Three phases after a warm-up of both (the daemon's buffers, caches and collector freezes
  reach their working size): **reconnect** (nodes reconnect, no jobs), **jobs** (jobs, no
  reconnections), **both**. The daemon's RSS (``/proc/<pid>/status``) is sampled every
  ``sample_every`` seconds with the reconnections and finished jobs counted so far.
* A slope is the least-squares fit of RSS against the phase's own count: bytes per
  reconnection over the reconnect phase, bytes per job over the jobs phase, and bytes per
  second over the last phase. The target is flat: a closed connection and a finished job leave
  nothing behind, so each slope is ~0 (a few bytes of noise per reconnection or job, falling
  with the phase's length).
* Every job is counted (submitted, done, lost), as in every scenario.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from schedd.devtools.bench.clients import Recorder, open_clients, open_fleet, open_loop
from schedd.devtools.bench.daemon import running_daemon
from schedd.devtools.bench.measure import _proc_memory
from schedd.devtools.bench.options import Options

__all__ = ["run_soak", "slope", "table_rows"]

def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ``ys`` against ``xs``; ``None`` when ``xs`` do not vary."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


class _Sampler:
    """RSS of the daemon with the counts of reconnections and finished jobs, over time."""

    def __init__(self, pid: int, reconnects: Callable[[], int], jobs: Callable[[], int]) -> None:
        self.pid, self.reconnects, self.jobs = pid, reconnects, jobs
        self.started = time.perf_counter()
        #: (seconds since start, RSS bytes, reconnections, jobs)
        self.samples: list[tuple[float, int, int, int]] = []

    def sample(self) -> tuple[float, int, int, int]:
        rss = _proc_memory(self.pid).get("VmRSS", 0) * 1024
        row = (time.perf_counter() - self.started, rss, self.reconnects(), self.jobs())
        self.samples.append(row)
        return row

    async def phase(self, seconds: float, every: float) -> list[tuple[float, int, int, int]]:
        """Sample for ``seconds``; returns the phase's samples."""
        first = len(self.samples)
        end = trio.current_time() + seconds
        while True:
            self.sample()
            if trio.current_time() + every > end:
                break
            await trio.sleep(every)
        return self.samples[first:]


def _fit(samples: list[tuple[float, int, int, int]], column: int, per: str) -> dict[str, Any]:
    xs = [float(s[column]) for s in samples]
    ys = [float(s[1]) for s in samples]
    fitted = slope(xs, ys)
    return {f"bytes_per_{per}": None if fitted is None else round(fitted, 1),
            per + "s": round(xs[-1] - xs[0], 1) if xs else 0,
            "rss_mb": [round(ys[0] / 2**20, 2), round(ys[-1] / 2**20, 2)] if ys else [],
            "samples": len(samples)}


async def run_soak(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scenario (module rules); returns its JSON."""
    if opt.url is not None:
        raise ValueError("SOAK measures the daemon's process: it needs its own daemon (no --url)")
    every, seconds = p["sample_every"], p["phase_seconds"]
    async with running_daemon(opt.settings) as daemon:
        url = daemon.url(opt.transport)
        recorder = Recorder()

        def finished() -> int:
            return sum(1 for r in recorder.jobs.values() if r.done_at)

        async with open_fleet(url, p["nodes"], opt.say, fail_rate=p["fail_rate"],
                              disconnect_rate=p["disconnect_rate"],
                              on_assign=recorder.on_assign) as fleet, \
                open_clients(url, recorder, p["clients"]) as clients:
            sampler = _Sampler(daemon.pid, lambda: fleet.stats.reconnects, finished)

            async def load(seconds: float, label: str) -> None:
                await open_loop(clients, recorder, p["rate"], seconds, lambda _: None, label)

            async def phase(name: str, jobs: bool, reconnect: bool,
                            length: float = seconds) -> list[Any]:
                fleet.disconnect_rate = p["disconnect_rate"] if reconnect else 0.0
                async with trio.open_nursery() as nursery:
                    if jobs:
                        nursery.start_soon(load, length, "SOAK")
                    samples = await sampler.phase(length, every)
                await recorder.drain()
                _, rss, reconnects, done = sampler.sample()
                opt.say(f"  SOAK: {name}: RSS {rss / 2**20:.1f} MB, {reconnects} reconnections, "
                        f"{done} jobs done")
                return samples

            await phase("warm-up", jobs=True, reconnect=True, length=p["warmup"])
            reconnect = await phase("reconnect", jobs=False, reconnect=True)
            jobs = await phase("jobs", jobs=True, reconnect=False)
            both = await phase("both", jobs=True, reconnect=True)
            stats = fleet.stats.snapshot()
        memory = _proc_memory(daemon.pid)
    summary = recorder.summary(list(recorder.jobs.values()))
    per_second = _fit(both, 0, "second")
    return {
        "nodes": p["nodes"], "disconnect_rate": p["disconnect_rate"], "job_rate": p["rate"],
        "reconnect_phase": _fit(reconnect, 2, "reconnection"),
        "jobs_phase": _fit(jobs, 3, "job"),
        "both_phase": {**per_second, "reconnections": both[-1][2] - both[0][2],
                       "jobs": both[-1][3] - both[0][3]},
        "rss_mb_end": round(memory.get("VmRSS", 0) / 1024, 1),
        "rss_peak_mb": round(memory.get("VmHWM", 0) / 1024, 1),
        "reconnects": stats["reconnects"], "node_errors": stats["errors"],
        "node_last_error": stats["last_error"],
        **{k: summary[k] for k in ("submitted", "done", "ok", "not_ok", "lost")},
        "errors": recorder.errors[:5], "error_count": len(recorder.errors),
    }


def table_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of ``schedd bench``'s table."""
    rc, jb, both = s["reconnect_phase"], s["jobs_phase"], s["both_phase"]

    def rss(phase: dict[str, Any]) -> str:
        return " -> ".join(f"{mb} MB" for mb in phase["rss_mb"])

    return [
        ("SOAK", "daemon RSS per reconnection (target ~0)",
         f"{rc['bytes_per_reconnection']} B ({rc['reconnections']:g} reconnections, "
         f"{rss(rc)})"),
        ("SOAK", "daemon RSS per job (target ~0)",
         f"{jb['bytes_per_job']} B ({jb['jobs']:g} jobs, {rss(jb)})"),
        ("SOAK", "daemon RSS per second, both",
         f"{both['bytes_per_second']} B ({both['reconnections']} reconnections, "
         f"{both['jobs']} jobs, {rss(both)})"),
        ("SOAK", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}"),
    ]
