"""The wall-clock part of ``schedd bench --scenarios FAIR``: fair share measured over the wire.

Rules of this module:

* Parameters: ``SCALES[scale]["FAIR"]["wire"]`` in :mod:`schedd.devtools.bench.scenarios`
  (``nodes`` of ``capacity`` slots, every job running ``duration`` seconds on its node, the slow
  tenant's ``rate`` as a fraction of the pool's, ``seconds`` per phase).
* One real daemon (:func:`schedd.devtools.bench.daemon.running_daemon`) configured with four
  client tokens, so four principals: ``slow`` and ``fast`` (weights 1 and 1), ``light`` and
  ``heavy`` (weights 1 and 3), and one node token. Lean clients and a simulated fleet talk to it
  over WebSocket. The pool runs ``nodes * capacity / duration`` jobs a second; a flooding tenant
  submits ten times that, open loop, so the pool stays saturated and its backlog grows.
* Each phase uses a pool of its own and a fleet of its own (closed at the phase's end, its
  backlog left queued): latency (the slow tenant alone at ``rate``, then at ``rate`` beside
  ``fast``), share 1:1 (``slow`` at the pool's rate beside ``fast``: both stay backlogged), share
  3:1 (``light`` at the pool's rate beside ``heavy``).
* ``hold``: the flooded latency phase and both share phases again on a second daemon with the
  fair reservation on (``[tenants] hold`` = ``p["hold"]`` seconds, :data:`HOLD` by default);
  ``held_idle`` there is the slot-time the pool left free while the flood had jobs queued,
  from the nodes' assigns and the clients' dones (the alone phase is the same with or without
  a hold: one tenant is never held back).
* Times are one monotonic clock of the bench process: submit is when the client sent the frame,
  node is when the node received its ``assign``. A principal "has work queued" from its job's
  submit to its assign; the share counts the assigns made while every principal of the phase
  had work queued.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Final

import trio

from schedd.devtools.bench.clients import Recorder, open_clients, open_fleet, open_loop
from schedd.devtools.bench.daemon import Setting, running_daemon
from schedd.devtools.bench.measure import percentiles
from schedd.principals import token_principal

__all__ = ["TOKENS", "run", "settings", "shares"]

#: one client token per tenant (at least 16 characters, as the daemon wants them)
TOKENS: Final = {name: f"fair-bench-{name}-token-0123456789" for name in
                 ("slow", "fast", "light", "heavy")}
NODE_TOKEN: Final = "fair-bench-node-token-0123456789"
WEIGHTS: Final = {"heavy": 3}
#: the flooding tenant submits this many times what the pool can run
FLOOD: Final = 10.0
#: seconds to wait, after a phase's submits, for the measured tenant's last jobs to be assigned
SETTLE: Final = 10.0
#: seconds of the reservation's hold in the hold-on phases: 40 times the slow tenant's mean gap
#: between submits at the default scale (so it never lapses while the tenant submits), short
#: enough that a tenant that stops hands its slots back within two seconds
HOLD: Final = 2.0


def settings(hold: float = 0.0) -> list[Setting]:
    """The daemon's tokens and weights for the four tenants (and the reservation's hold)."""
    tokens = ", ".join(f'"{token}"' for token in TOKENS.values())
    return [*([("tenants", "hold", repr(hold))] if hold else []),
            ("auth", "client_tokens", f"[{tokens}]"),
            ("auth", "node_tokens", f'["{NODE_TOKEN}"]'),
            *[("tenants.weights", f'"{token_principal(TOKENS[name])}"', str(weight))
              for name, weight in WEIGHTS.items()]]


def _tenant(job_id: str) -> str:
    """The tenant of a job id ``TENANT.POOL-SEQ``: ids unique across phases, as the daemon
    would take a repeated id for the job it already has."""
    return job_id.split(".", 1)[0]


def shares(recorder: Recorder, tenants: tuple[str, ...]) -> dict[str, Any]:
    """Over the assigns made while every one of ``tenants`` had a job submitted and not yet
    assigned, the part that went to each."""
    events: list[tuple[float, int, str]] = []
    for job_id, record in recorder.jobs.items():
        events.append((record.submitted, 0, _tenant(job_id)))
        if record.node_at:
            events.append((record.node_at, 1, _tenant(job_id)))
    queued = dict.fromkeys(tenants, 0)
    contended = dict.fromkeys(tenants, 0)
    for _, kind, tenant in sorted(events):
        if kind == 0:
            queued[tenant] += 1
            continue
        if all(n > 0 for n in queued.values()):
            contended[tenant] += 1
        queued[tenant] -= 1
    total = sum(contended.values())
    return {"contended_dispatches": total, "errors": len(recorder.errors),
            "share": {t: round(n / total, 4) if total else None for t, n in contended.items()},
            "queued_at_end": queued}


def _slow_latency(recorder: Recorder, tenant: str, since: float) -> dict[str, Any]:
    """The tenant's submit-to-node times, and for each of its jobs the wait from its submit to
    the next ``done`` of any job of the pool: the slot no scheduler that does not preempt can
    give it sooner when the pool is full (zero for a job submitted while a slot was free is not
    known here: this is an upper reference, not a floor for every job)."""
    records = [r for job_id, r in recorder.jobs.items()
               if _tenant(job_id) == tenant and r.submitted >= since]
    summary = Recorder.summary(records)
    done = sorted(r.done_at for r in recorder.jobs.values() if r.done_at)
    waits = []
    for r in records:
        i = bisect.bisect_left(done, r.submitted)
        if i < len(done):
            waits.append(done[i] - r.submitted)
    return {"jobs": len(records), "errors": len(recorder.errors),
            "unassigned": sum(1 for r in records if not r.node_at),
            "submit_to_node_ms": summary["submit_to_node_ms"],
            "next_done_ms": percentiles(waits)}


def held_idle(recorder: Recorder, slots: int, since: float) -> float | None:
    """The part of the slot-time from ``since`` to the last assign that the pool left free while
    some job was submitted and not yet assigned (a slot counts busy from its node's receipt of
    the assign to the client's receipt of the done: an upper bound of the slot's busy time)."""
    events: list[tuple[float, int]] = []  # (time, change): +1 queued, -1 assigned; running +/-
    running: list[tuple[float, int]] = []
    for record in recorder.jobs.values():
        events.append((record.submitted, 1))
        if record.node_at:
            events.append((record.node_at, -1))
            running.append((record.node_at, 1))
            running.append((record.done_at or record.node_at, -1))
    end = max((t for t, _ in running), default=since)
    merged = sorted([(t, q, 0) for t, q in events] + [(t, 0, r) for t, r in running])
    queued = busy = 0
    last = since
    held = total = 0.0
    for t, dq, dr in merged:
        if t > end:
            break
        if t > since:
            span = t - max(last, since)
            if span > 0:
                total += span * slots
                if queued > 0:
                    held += span * max(0, slots - busy)
            last = t
        queued += dq
        busy += dr
    return round(held / total, 4) if total else None


async def _wait_assigned(recorder: Recorder, tenant: str) -> None:
    with trio.move_on_after(SETTLE):
        while any(not r.node_at for job_id, r in recorder.jobs.items()  # noqa: ASYNC110
                  if _tenant(job_id) == tenant):
            await trio.sleep(0.05)


async def _phase(url: str, p: dict[str, Any], pool: str, rates: dict[str, float],
                 measured: str | None, say: Any) -> tuple[Recorder, float]:
    """Every tenant of ``rates`` (jobs a second) submitting for ``p["seconds"]`` on a fresh
    fleet serving ``pool`` (then, when ``measured`` names one, until its jobs are assigned or
    :data:`SETTLE`); returns the record and when the measured window starts (the
    flood's first second is its ramp)."""
    recorder = Recorder()
    quiet = lambda _text: None  # noqa: E731 (open_loop's progress lines are not wanted here)
    duration = float(p["duration"])
    seconds = float(p["seconds"])
    fleet = open_fleet(url, int(p["nodes"]), say, pool=pool, capacity=int(p["capacity"]),
                       duration=lambda: duration, token=NODE_TOKEN, prefix=pool,
                       on_assign=recorder.on_assign)
    async with fleet, trio.open_nursery() as nursery:
        clients = {}
        for tenant in rates:
            clients[tenant] = await nursery.start(_clients, url, recorder, tenant, pool)
        start = time.perf_counter()
        async with trio.open_nursery() as load:
            for tenant, rate in rates.items():
                load.start_soon(open_loop, clients[tenant], recorder, rate, seconds, quiet,
                                f"{tenant}.{pool}")
        if measured is not None:
            await _wait_assigned(recorder, measured)
        nursery.cancel_scope.cancel()
    ramp = min(1.0, seconds / 4) if len(rates) > 1 else 0.0
    return recorder, start + ramp


async def _clients(url: str, recorder: Recorder, tenant: str, pool: str, *,
                   task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
    async with open_clients(url, recorder, 1, token=TOKENS[tenant], pool=pool) as clients:
        task_status.started(clients)
        await trio.sleep_forever()


async def run(p: dict[str, Any], say: Any = print) -> dict[str, Any]:
    """The three phases on one daemon: see the module's rules."""
    pool_rate = int(p["nodes"]) * int(p["capacity"]) / float(p["duration"])
    slow_rate = float(p["rate"]) * pool_rate
    out: dict[str, Any] = {"pool_jobs_per_s": pool_rate, "slow_jobs_per_s": slow_rate,
                           "flood_jobs_per_s": FLOOD * pool_rate, **{
                               k: p[k] for k in ("nodes", "capacity", "duration", "seconds")}}
    async with running_daemon(settings()) as daemon:
        url = daemon.url("ws")
        alone, since = await _phase(url, p, "lat-alone", {"slow": slow_rate}, "slow", say)
        out["alone"] = _slow_latency(alone, "slow", since)
        flooded, since = await _phase(url, p, "lat-flood",
                                      {"fast": FLOOD * pool_rate, "slow": slow_rate}, "slow", say)
        out["flooded"] = _slow_latency(flooded, "slow", since)
        out["flooded_share"] = shares(flooded, ("fast", "slow"))
        a = out["alone"]["submit_to_node_ms"].get("p99")
        f = out["flooded"]["submit_to_node_ms"].get("p99")
        out["p99_ratio"] = round(f / a, 2) if a and f is not None else None
        say(f"  FAIR wire: slow at {slow_rate:g}/s, p99 submit->node alone {a} ms, "
            f"beside {FLOOD * pool_rate:g}/s {f} ms")
        await _shares(url, p, pool_rate, out, say)
    hold = float(p.get("hold", HOLD))
    slots = int(p["nodes"]) * int(p["capacity"])
    out["hold"] = {"hold_s": hold}
    async with running_daemon(settings(hold)) as daemon:
        url = daemon.url("ws")
        flooded, since = await _phase(url, p, "hold-flood",
                                      {"fast": FLOOD * pool_rate, "slow": slow_rate}, "slow", say)
        h = out["hold"]
        h["flooded"] = _slow_latency(flooded, "slow", since)
        h["flooded_share"] = shares(flooded, ("fast", "slow"))
        h["held_idle"] = held_idle(flooded, slots, since)
        a = out["alone"]["submit_to_node_ms"].get("p99")
        f = h["flooded"]["submit_to_node_ms"].get("p99")
        h["p99_ratio"] = round(f / a, 2) if a and f is not None else None
        say(f"  FAIR wire (hold {hold:g} s): slow p99 submit->node beside the flood {f} ms, "
            f"held idle {h['held_idle']}")
        await _shares(url, p, pool_rate, h, say, "hold-")
    return out


async def _shares(url: str, p: dict[str, Any], pool_rate: float, out: dict[str, Any],
                  say: Any, prefix: str = "") -> None:
    for key, pool, pair in (("share_1_1", "share-11", ("fast", "slow")),
                            ("share_3_1", "share-31", ("heavy", "light"))):
        rec, _ = await _phase(url, p, prefix + pool, {pair[0]: FLOOD * pool_rate,
                                                       pair[1]: pool_rate}, None, say)
        out[key] = shares(rec, pair)
        say(f"  FAIR wire: {prefix}{key} {out[key]['share']}")


def table_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The wall-clock rows of the FAIR table."""
    setup = (f"{r['nodes']}x{r['capacity']} slots, {r['duration'] * 1000:g} ms jobs = "
             f"{r['pool_jobs_per_s']:g} jobs/s; flood {r['flood_jobs_per_s']:g}/s")
    alone, flooded = r["alone"]["submit_to_node_ms"], r["flooded"]["submit_to_node_ms"]
    return [
        ("FAIR", f"wire share 1:1 while both queued (target 45-55 %; {setup})",
         str(r["share_1_1"]["share"])),
        ("FAIR", "wire share 3:1 while both queued (target 75 +- 5 %)",
         str(r["share_3_1"]["share"])),
        ("FAIR", f"wire slow at {r['slow_jobs_per_s']:g}/s: submit->node p50/p99 ms alone / "
                 "beside the flood (target p99 ratio <= 2)",
         f"{alone.get('p50')}/{alone.get('p99')} / {flooded.get('p50')}/{flooded.get('p99')} "
         f"(ratio {r['p99_ratio']}; next done of the pool p99 "
         f"{r['flooded']['next_done_ms'].get('p99')})"),
        *_hold_rows(r),
    ]


def _hold_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    if "hold" not in r:
        return []
    h = r["hold"]
    on = f"hold {h['hold_s']:g} s"
    flooded = h["flooded"]["submit_to_node_ms"]
    return [
        ("FAIR", f"wire share 1:1 while both queued ({on})", str(h["share_1_1"]["share"])),
        ("FAIR", f"wire share 3:1 while both queued ({on})", str(h["share_3_1"]["share"])),
        ("FAIR", f"wire slow at {r['slow_jobs_per_s']:g}/s ({on}): submit->node p50/p99 ms "
                 "beside the flood (ratio to alone; slot-time held idle while queued)",
         f"{flooded.get('p50')}/{flooded.get('p99')} (ratio {h['p99_ratio']}; held idle "
         f"{h['held_idle']})"),
    ]
