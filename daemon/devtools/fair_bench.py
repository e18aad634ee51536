"""``schedd bench --scenarios FAIR``: weighted fair share between principals, and what a dispatch
from the fair queues costs Redis with 1, 10 and 1,000 principals queued on one pool.

Rules of this module:

* Parameters: ``SCALES[scale]["FAIR"]`` in :mod:`schedd.devtools.bench.scenarios`
  (``dispatches`` per simulated run, ``capacity`` of the pool's one node, ``principals`` sizes
  and ``calls`` for the cost part).
* A throw-away redis-server; the scripts are called through :class:`schedd.core.Core`, as the
  daemon calls them. Shares and latencies come from a discrete-event simulation in virtual time:
  one pool, one node of ``capacity`` slots, every job runs a time drawn uniformly from 0.5 to 1.5
  (the mean is 1); each principal submits at its own rate, as a multiple of the pool's (capacity
  jobs per unit of time), with exponential gaps from a fixed seed. A completion calls
  ``job_result``, whose ``feed_node`` picks the next queued job: the order of dispatches is the
  scripts', the clock is the simulation's, so the figures measure the algorithm, not the host.
* Share: over the dispatches from the queue made while every principal had a job queued, the
  part that went to each principal. Latency: submit to assign, in units of the mean run time.
* Cost: the Redis time of ``job_result`` (its ``FCALL`` or ``EVALSHA``, including the fair
  dispatch it makes), per call, from ``INFO commandstats``, with the given number of principals
  each keeping jobs queued. The claim is a bound: it does not grow with the principals.
* Held idle: the slot-time left free while some job was queued, over the run's slot-time (the
  utilisation a reservation gives up; 0 without one).
* ``hold``: the same runs with the fair reservation on (``[tenants] hold``). The hold is Redis
  time, the simulation's clock is not: :data:`HOLD` (one hour) outlasts every run, so every
  principal that submitted in the run stays active to its end, as a principal submitting more
  often than the hold does over the wire (where a hold's lapse is measured, ``fair_wire``).
* ``p["wire"]`` (when given): the same shares and the slow principal's latency in wall time,
  with a real daemon, nodes and clients over the wire (:mod:`schedd.devtools.fair_wire`).
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
from typing import Any, Final

from schedd.core import AssignDelivery, Core, CoreSettings, Delivery, JobSpec
from schedd.devtools.redis_process import RedisServer, command_stats
from schedd.store import open_store
from schedd.store.base import Store

__all__ = ["run", "simulate", "table_rows"]

SEED: Final = 25
FAR: Final = 10**6  # seconds: no queue deadline fires during a run
#: the node sends no heartbeat: one interval this long keeps it alive through a run
BEAT: Final = 10**4
#: seconds of the reservation's hold in the hold-on runs: longer than any run
HOLD: Final = 3600.0


class _Sim:
    """One simulated run: a node of ``capacity`` slots and principals submitting at rates."""

    def __init__(self, core: Core, rates: dict[str, float], capacity: int) -> None:
        self.core, self.rates, self.capacity = core, rates, capacity
        self.rng = random.Random(SEED)
        self.now = 0.0
        self.events: list[tuple[float, int, str, str]] = []
        self.seq = 0
        self.owner: dict[str, str] = {}
        self.submitted: dict[str, float] = {}
        self.queued = dict.fromkeys(rates, 0)
        self.latency: dict[str, list[float]] = {name: [] for name in rates}
        #: per job that had to queue, the wait until the pool's next completion: what no
        #: scheduler that does not preempt can beat
        self.floor: dict[str, list[float]] = {name: [] for name in rates}
        self.contended: dict[str, int] = dict.fromkeys(rates, 0)
        self.attempt: dict[str, int] = {}
        self.assigned: list[str] = []
        self.running = 0
        self.last = 0.0
        #: slot-time left free while a job was queued, and the run's slot-time
        self.held_idle = 0.0
        self.slot_time = 0.0

    def advance(self, at: float) -> None:
        """Move the clock to ``at``, counting the free slots held while jobs were queued."""
        dt = at - self.last
        if any(n > 0 for n in self.queued.values()):
            self.held_idle += dt * (self.capacity - self.running)
        self.slot_time += dt * self.capacity
        self.last = self.now = at

    def push(self, at: float, kind: str, what: str) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, what))

    def on_delivery(self, delivery: Delivery) -> None:
        if isinstance(delivery, AssignDelivery):
            job = delivery.job_id
            self.assigned.append(job)
            self.attempt[job] = delivery.attempt
            self.latency[self.owner[job]].append(self.now - self.submitted[job])
            self.running += 1
            self.push(self.now + self.rng.uniform(0.5, 1.5), "done", job)

    async def run(self, dispatches: int) -> None:
        for name, rate in self.rates.items():
            self.push(self.rng.expovariate(rate * self.capacity), "submit", name)
        submitted = 0  # a run ends after `dispatches` assignments, at submit or from the queue
        while len(self.assigned) < dispatches and self.events:
            at, _, kind, what = heapq.heappop(self.events)
            self.advance(at)
            if kind == "submit":
                submitted += 1
                if submitted > 100 * (dispatches + 100):
                    raise RuntimeError("the pool stopped dispatching")
                job_id = f"{what}-{self.seq}"
                self.owner[job_id], self.submitted[job_id] = what, self.now
                sub = await self.core.submit(JobSpec(pools=("p",), job_id=job_id),
                                             principal=what)
                if sub.state == "queued":
                    self.queued[what] += 1
                    self.floor[what].append(
                        min(at for at, _, k, _ in self.events if k == "done") - self.now)
                else:
                    self.floor[what].append(0.0)
                rate = self.rates[what] * self.capacity
                self.push(self.now + self.rng.expovariate(rate), "submit", what)
                continue
            contended = all(n > 0 for n in self.queued.values())
            self.running -= 1
            before = len(self.assigned)
            await self.core.result(what, node_id="n", attempt=self.attempt[what], ok=True)
            for job in self.assigned[before:]:
                self.queued[self.owner[job]] -= 1
                if contended:
                    self.contended[self.owner[job]] += 1


async def simulate(store: Store, rates: dict[str, float], weights: dict[str, float],
                   capacity: int, dispatches: int, hold: float = 0.0) -> dict[str, Any]:
    """One run in a fresh namespace: shares while all principals had work queued, each
    principal's submit-to-assign latency (p50, p99, in mean run times), and the slot-time
    held idle while jobs were queued."""
    await store.execute("FLUSHALL")
    sims: list[_Sim] = []
    settings = CoreSettings(namespace="fair", instance="bench", queue_timeout=FAR,
                            heartbeat_interval=BEAT, max_queued=10**7, weights=weights,
                            fair_hold=hold)
    core = Core(store, settings, lambda delivery: sims[0].on_delivery(delivery))
    await core.start()
    sim = _Sim(core, rates, capacity)
    sims.append(sim)
    await core.register_node(node_id="n", capacity=capacity, pools=["p"])
    await sim.run(dispatches)
    total = sum(sim.contended.values())
    return {
        "rates": rates, "weights": weights,
        "contended_dispatches": total,
        "share": {name: round(n / total, 4) if total else None
                  for name, n in sim.contended.items()},
        "latency_p50": {name: _pct(v, 50) for name, v in sim.latency.items()},
        "latency_p99": {name: _pct(v, 99) for name, v in sim.latency.items()},
        "next_free_slot_p99": {name: _pct(v, 99) for name, v in sim.floor.items()},
        "held_idle": round(sim.held_idle / sim.slot_time, 4) if sim.slot_time else 0.0,
    }


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 3)


async def dispatch_cost(store: Store, principals: int, calls: int,
                        hold: float = 0.0) -> dict[str, Any]:
    """Redis time of ``job_result`` with a fair dispatch, ``principals`` keeping jobs queued
    (with ``hold``: every one of them active under the fair reservation)."""
    await store.execute("FLUSHALL")
    running: list[AssignDelivery] = []

    def deliver(delivery: Delivery) -> None:
        if isinstance(delivery, AssignDelivery):
            running.append(delivery)

    core = Core(store, CoreSettings(namespace="fair", instance="bench", queue_timeout=FAR,
                                    heartbeat_interval=BEAT, max_queued=10**7,
                                    fair_hold=hold), deliver)
    await core.start()
    await core.register_node(node_id="n", capacity=1, pools=["p"])
    each = calls // principals + 2  # every principal keeps jobs queued to the end
    for _ in range(each):
        for p in range(principals):
            await core.submit(JobSpec(pools=("p",)), principal=f"tenant-{p}")
    trips = []
    await store.execute("CONFIG", "RESETSTAT")
    for _ in range(calls):
        job = running.pop(0)
        started = time.perf_counter()
        await core.result(job.job_id, node_id="n", attempt=job.attempt, ok=True)
        trips.append((time.perf_counter() - started) * 1e6)
    stats = command_stats(await store.execute("INFO", "commandstats"))
    script = [s for name, s in stats.items() if name in ("fcall", "evalsha")]
    usec = sum(s["usec"] for s in script) / calls
    inner = sum(s["calls"] for name, s in stats.items()
                if name not in ("fcall", "evalsha", "config")) / calls
    return {"principals": principals, "queued": each * principals - 1, "hold": hold,
            "redis_usec_per_call": round(usec, 1), "commands_per_call": round(inner, 1),
            "round_trip_us_p50": round(statistics.median(trips))}


async def _runs(store: Store, p: dict[str, Any], hold: float, say: Any) -> dict[str, Any]:
    """The shares and the slow principal's latencies, with the reservation's ``hold``."""
    dispatches, capacity = int(p["dispatches"]), int(p["capacity"])
    on = f" (hold {hold:g} s)" if hold else ""
    out: dict[str, Any] = {"hold_s": hold}
    # both principals backlogged: one at 10x the pool's rate, one at the pool's rate
    out["share_1_1"] = await simulate(store, {"fast": 10.0, "slow": 1.0}, {},
                                      capacity, dispatches, hold)
    out["share_3_1"] = await simulate(store, {"heavy": 10.0, "light": 1.0},
                                      {"heavy": 3.0}, capacity, dispatches, hold)
    say(f"  FAIR{on}: 1:1 share {out['share_1_1']['share']}, 3:1 share "
        f"{out['share_3_1']['share']}")
    # the slow principal within its share, alone and under a flood at 10x the pool
    out["slow"] = {}
    for rate in p["slow_rates"]:
        alone = await simulate(store, {"slow": rate}, {}, capacity, dispatches // 2, hold)
        flooded = await simulate(store, {"fast": 10.0, "slow": rate}, {}, capacity,
                                 dispatches, hold)
        a, f = alone["latency_p99"]["slow"], flooded["latency_p99"]["slow"]
        out["slow"][str(rate)] = {"p99_alone": a, "p99_flooded": f,
                                  "p99_next_free_slot_flooded":
                                      flooded["next_free_slot_p99"]["slow"],
                                  "p50_alone": alone["latency_p50"]["slow"],
                                  "p50_flooded": flooded["latency_p50"]["slow"],
                                  "p99_ratio": round(f / a, 2) if a else None,
                                  "held_idle_flooded": flooded["held_idle"]}
        say(f"  FAIR{on}: slow at {rate:g} of the pool: p99 alone {a}, flooded {f}, "
            f"held idle {flooded['held_idle']}")
    return out


async def run(p: dict[str, Any], say: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with RedisServer() as server:
        async with open_store(server.url) as store:
            out.update(await _runs(store, p, 0.0, say))
            out["hold"] = await _runs(store, p, HOLD, say)
            out["cost"] = [await dispatch_cost(store, n, int(p["calls"]))
                           for n in p["principals"]]
            out["cost_hold"] = [await dispatch_cost(store, n, int(p["calls"]), HOLD)
                                for n in p["principals"]]
            for row in out["cost"] + out["cost_hold"]:
                say(f"  FAIR: {row['principals']} principals queued, hold {row['hold']:g} s: "
                    f"{row['redis_usec_per_call']} us Redis, {row['commands_per_call']} "
                    "commands per job_result + dispatch")
    if "wire" in p:
        from schedd.devtools import fair_wire

        out["wire"] = await fair_wire.run(p["wire"], say)
    return out


def _sim_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    on = f", hold {r['hold_s']:g} s" if r.get("hold_s") else ""
    return [("FAIR", f"share 1:1 while both queued (target 45-55 %{on})",
             str(r["share_1_1"]["share"])),
            ("FAIR", f"share 3:1 while both queued (target 75 +- 5 %{on})",
             str(r["share_3_1"]["share"])),
            *[("FAIR", f"slow at {rate} of the pool{on}: p99 submit->assign alone / flooded "
               "(mean run times; target ratio <= 2)",
               f"{s['p99_alone']} / {s['p99_flooded']} (ratio {s['p99_ratio']}; "
               f"next free slot p99 {s['p99_next_free_slot_flooded']}; held idle "
               f"{s.get('held_idle_flooded', 0.0)})")
              for rate, s in r["slow"].items()]]


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = _sim_rows(r)
    if "hold" in r:
        rows += _sim_rows(r["hold"])
    rows += [("FAIR", f"Redis us (commands) per job_result+dispatch, {c['principals']} "
              f"principals{', hold on' if c.get('hold') else ''}",
              f"{c['redis_usec_per_call']} ({c['commands_per_call']})")
             for c in r["cost"] + r.get("cost_hold", [])]
    if "wire" in r:
        from schedd.devtools import fair_wire

        rows += fair_wire.table_rows(r["wire"])
    return rows
