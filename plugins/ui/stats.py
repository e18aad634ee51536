"""One read of the global state from Redis, and the figures the API and the metrics derive from it.

Rules of this module:

- **One snapshot serves every view.** :class:`SnapshotReader` reads counts, exclusions,
  instances, nodes, pools, the recent-completions window and Redis's clock concurrently (the store
  pipelines them). Concurrent requests share one read in flight, and a snapshot is reused for
  :data:`REUSE_SECONDS`, so any number of open dashboards and scrapers cost at most a few reads a
  second. Nothing else is cached: the job and clients endpoints and ``/healthz`` always ask Redis.
- **Time is Redis's time.** Scripts stamp heartbeats and completions with Redis ``TIME``, so
  ages, the throughput window and instance liveness are computed against ``now_ms`` read from
  the same clock, never this machine's.
- **Throughput and latency come from the recent-completions window** (the newest
  :data:`FINISHED_KEPT` finished jobs, kept by the Lua library). Jobs finished in the last
  :data:`WINDOW_SECONDS` count. When the list is full and its oldest entry is inside the window,
  older completions were trimmed away, so the window is shortened to start at that entry (the
  rate stays right at any throughput; ``span_s`` tells the window really used).
- **Percentiles are nearest-rank**: the p-th percentile of n sorted samples is sample
  ``ceil(p/100 * n)`` (1-based), so it is always an observed value; ``None`` with no samples.
  ``submit_to_done`` uses jobs that ended ``done``; ``submit_to_assigned`` every finished job that
  was ever assigned.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import trio

from schedd.api import (
    JOB_STATES,
    TERMINAL_STATES,
    Daemon,
    FinishedJob,
    NodeInfo,
    PoolInfo,
    UsageInfo,
)

__all__ = [
    "FINISHED_KEPT",
    "FINISHED_STATES",
    "NODE_STATES",
    "PERCENTILES",
    "REUSE_SECONDS",
    "USAGE_READ",
    "WINDOW_SECONDS",
    "Snapshot",
    "SnapshotReader",
    "Throughput",
    "latency_ms",
    "percentile",
    "read_snapshot",
    "stats_view",
    "throughput",
]

#: Completions the Lua library keeps in the ``finished`` list (``FINISHED_KEPT`` in
#: ``lua/include/lib.lua``).
FINISHED_KEPT: Final = 2000
#: The window throughput and latency percentiles are computed over.
WINDOW_SECONDS: Final = 60.0
#: How long a snapshot is reused by later requests.
REUSE_SECONDS: Final = 0.25
PERCENTILES: Final = (50, 90, 99)
#: Principals whose usage a snapshot reads: the most recently active (the metrics and the
#: dashboard cap them further).
USAGE_READ: Final = 1000
#: Every state a node hash can be in (``lua/node_register.lua``, ``node_drain.lua``,
#: ``node_offline.lua``); the views list each one, even at zero.
NODE_STATES: Final = ("online", "draining", "offline")
#: Terminal states in the order the views list them.
FINISHED_STATES: Final = tuple(s for s in JOB_STATES if s in TERMINAL_STATES)


@attrs.frozen(kw_only=True)
class Snapshot:
    """The global state as read from Redis at ``now_ms`` (Redis time, unix ms)."""

    now_ms: int
    counts: dict[str, int]
    exclusions: dict[str, int]
    instances: dict[str, int]
    nodes: list[NodeInfo]
    pools: list[PoolInfo]
    finished: list[FinishedJob]
    #: the most recently active principals' usage (at most USAGE_READ of them)
    usage: list[UsageInfo] = attrs.field(factory=list)

    def live_instances(self) -> dict[str, int]:
        """Instances whose presence has not expired: id -> expiry (unix ms)."""
        return {k: v for k, v in self.instances.items() if v > self.now_ms}

    def nodes_by_state(self) -> dict[str, int]:
        by_state = Counter(node.state for node in self.nodes)
        return {**{state: by_state.pop(state, 0) for state in NODE_STATES}, **by_state}

    def slots(self) -> tuple[int, int]:
        """(capacity, used) summed over the nodes that are not offline."""
        live = [node for node in self.nodes if node.state != "offline"]
        return sum(node.capacity for node in live), sum(node.used for node in live)


async def read_snapshot(app: Daemon) -> Snapshot:
    """Read everything concurrently; raises :class:`~schedd.errors.StoreError` on failure."""
    results: dict[str, Any] = {}

    async def read(name: str, call: Any) -> None:
        results[name] = await call()

    queries = app.queries
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, "now_ms", app.store_time_ms)
        nursery.start_soon(read, "counts", queries.counts)
        nursery.start_soon(read, "exclusions", queries.exclusions)
        nursery.start_soon(read, "instances", queries.instances)
        nursery.start_soon(read, "nodes", queries.nodes)
        nursery.start_soon(read, "pools", queries.pools)
        nursery.start_soon(read, "finished", lambda: queries.recent_finished(FINISHED_KEPT))
        nursery.start_soon(read, "usage", lambda: queries.usage(limit=USAGE_READ))
    return Snapshot(**results)


class SnapshotReader:
    """Single-flight, briefly reused snapshots (see the module rules)."""

    def __init__(self, app: Daemon, reuse: float = REUSE_SECONDS) -> None:
        self._app = app
        self._reuse = reuse
        self._lock = trio.Lock()
        self._snapshot: Snapshot | None = None
        self._read_at = -math.inf

    async def get(self) -> Snapshot:
        async with self._lock:
            if self._snapshot is None or trio.current_time() - self._read_at >= self._reuse:
                try:
                    snapshot = await read_snapshot(self._app)
                except BaseExceptionGroup as group:
                    # one failed read fails them all the same way: report the first cause
                    raise _first_leaf(group) from None
                self._snapshot, self._read_at = snapshot, trio.current_time()
            return self._snapshot


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# -------------------------------------------------------------------------------------------------
# Figures
# -------------------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values; ``None`` when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@attrs.frozen(kw_only=True)
class Throughput:
    window_s: float  # the window asked for
    span_s: float  # the window really covered (shorter when completions were trimmed)
    recent: list[FinishedJob]  # completions inside the span, newest first

    def per_second(self, states: Iterable[str] | None = None) -> float:
        wanted = None if states is None else set(states)
        n = sum(1 for f in self.recent if wanted is None or f.state in wanted)
        return n / self.span_s if self.span_s > 0 else 0.0


def throughput(
    finished: Sequence[FinishedJob],
    now_ms: int,
    window_s: float = WINDOW_SECONDS,
    kept: int = FINISHED_KEPT,
) -> Throughput:
    """The completions of the last ``window_s`` seconds, and the span they really cover."""
    start_ms = now_ms - window_s * 1000
    recent = [f for f in finished if f.finished_ms > start_ms]
    span_ms = window_s * 1000
    if len(finished) >= kept and finished and finished[-1].finished_ms > start_ms:
        span_ms = max(1, now_ms - finished[-1].finished_ms)
    return Throughput(window_s=window_s, span_s=span_ms / 1000, recent=recent)


def latency_ms(recent: Sequence[FinishedJob]) -> dict[str, dict[str, Any]]:
    """``submit_to_done`` and ``submit_to_assigned``: sample count and percentiles in ms."""
    phases = {
        "submit_to_done": sorted(
            f.finished_ms - f.submitted_ms
            for f in recent
            if f.state == "done" and f.submitted_ms > 0
        ),
        "submit_to_assigned": sorted(
            f.assigned_ms - f.submitted_ms
            for f in recent
            if f.assigned_ms > 0 and f.submitted_ms > 0
        ),
    }
    return {
        phase: {"count": len(values), **{f"p{p}": percentile(values, p) for p in PERCENTILES}}
        for phase, values in phases.items()
    }


def stats_view(snapshot: Snapshot, instance: str) -> dict[str, Any]:
    """The ``/api/v1/stats`` document (its shape is documented in ``docs/plugins.md``)."""
    counts = snapshot.counts
    capacity, used = snapshot.slots()
    window = throughput(snapshot.finished, snapshot.now_ms)
    return {
        "now_ms": snapshot.now_ms,
        "instance": instance,
        "jobs": {state: counts.get(state, 0) for state in JOB_STATES},
        "totals": {
            "submitted": counts.get("total:submitted", 0),
            **{state: counts.get(f"total:{state}", 0) for state in FINISHED_STATES},
        },
        "nodes": {
            "total": len(snapshot.nodes),
            "by_state": snapshot.nodes_by_state(),
            "capacity": capacity,
            "used": used,
        },
        "pools": {
            "count": len(snapshot.pools),
            "free_slots": sum(pool.free_slots for pool in snapshot.pools),
        },
        "throughput": {
            "window_s": window.window_s,
            "span_s": window.span_s,
            "finished": len(window.recent),
            "finished_per_s": window.per_second(),
            "by_state_per_s": {s: window.per_second([s]) for s in FINISHED_STATES},
        },
        "latency_ms": latency_ms(window.recent),
        "exclusions": dict(snapshot.exclusions),
        "instances": {"live": len(snapshot.live_instances()), "known": len(snapshot.instances)},
    }
