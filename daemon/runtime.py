"""Process-wide settings of the interpreter for long-running schedd processes.

CPython's cyclic garbage collector runs a young-generation pass every 700 net allocations by
default. A daemon holding 10,000 connections allocates a few small objects per message and
keeps most of what it allocates (sessions, channels, tasks), so those passes and the full
passes they trigger cost a large share of its CPU and add to the dispatch tail
(docs/decisions/0004-collector-freezes-connections.md).
Reference counting frees almost everything the hot paths allocate; the collector is only
needed for cycles, so it can run far less often.

Raising the thresholds is not enough on its own: every object a connection keeps (its task,
coroutines, cancel scopes, socket, about a hundred per connection) is walked again by each
middle and full pass until it reaches the oldest generation, and a pass over the objects of
thousands of connections stops the process for up to a second, at a moment nobody chose. A
stop that long delays the heartbeats queued behind it past the liveness deadline, so live
nodes are reaped (docs/decisions/0004-collector-freezes-connections.md).
:func:`serve_gc_settler` keeps those objects out of the passes while they arrive, and pays for
a full pass only when it is worth it:

- each time :data:`FREEZE_STEP` more connections have opened, it collects the young
  generations and freezes what survived (:func:`freeze_young`): a pass over what is newer than
  the last freeze only, a few milliseconds, so a fleet that connects is frozen as it comes;
- once the connections that *ended* since the last full pass amount to a fifth of the count
  (at least :data:`SETTLE_MINIMUM`) and the count has then held steady for a few seconds, it
  runs one full collection, frozen objects included, to reclaim their cycles, and freezes the
  survivors again (:func:`settle_gc`);
- while connections keep arriving as others end (a fleet whose nodes reconnect now and then:
  the count holds, the arrivals never stop), the arrivals are not waited for once the
  connections ended since the last full pass amount to the whole count (:data:`SETTLE_CHURN`,
  at least :data:`SETTLE_MINIMUM`): one full pass per turnover of the fleet, when the count has
  held steady for a few seconds.

Cycles that become garbage while frozen wait for the next full pass; the last two rules bound
them to about a fifth of the connections, or a whole fleet's worth under constant churn. A
closed connection itself leaves no cycle (tests/daemon/test_closed_connections.py): reference
counting frees its objects when it ends, frozen or not.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["FREEZE_STEP", "GC_THRESHOLDS", "SETTLE_CHANGE", "SETTLE_CHURN", "SETTLE_MINIMUM",
           "freeze_young", "serve_gc_settler", "settle_gc", "tune_gc"]

log = logging.getLogger(__name__)

#: Young-generation pass every 50,000 net allocations; older generations as by default.
GC_THRESHOLDS: Final = (50_000, 10, 10)
#: Freeze the young generations each time this many more connections have opened.
FREEZE_STEP: Final = 500
#: A full pass once the connections ended since the last one are this fraction of the count …
SETTLE_CHANGE: Final = 0.2
#: … and at least this many (below it a full pass is short anyway).
SETTLE_MINIMUM: Final = 500
#: While connections keep arriving: a full pass once the ended ones are this fraction of the
#: count (and at least SETTLE_MINIMUM), the count holding steady.
SETTLE_CHURN: Final = 1.0


def tune_gc() -> None:
    """Collect once, freeze what start-up built (modules, configuration, compiled scripts)
    out of every later pass, and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_young() -> float:
    """Collect the two young generations, then freeze every survivor out of later passes.

    Walks only what is not frozen yet, so its time grows with what arrived since the last
    freeze, not with the heap. Returns the seconds it took.
    """
    started = time.perf_counter()
    gc.collect(1)
    gc.freeze()
    return time.perf_counter() - started


def settle_gc() -> float:
    """One full collection over every object, frozen ones included, then freeze the survivors.

    Cycles that were frozen earlier and have become garbage since (the tasks of a connection
    that ended, say) are reclaimed here. Returns the seconds the pass took. (The number of
    frozen objects is not counted: ``gc.get_freeze_count`` walks them all, 170 ms for a
    million.)
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return time.perf_counter() - started


async def serve_gc_settler(
    population: Callable[[], int], arrivals: Callable[[], int], *, check: float = 1.0,
    steady: float = 5.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Freeze connections as they arrive and settle after many ended (module rules); never
    returns.

    :param population: the number of open connections now.
    :param arrivals: connections opened since start (monotonic). Those that ended are
        ``arrivals - population`` plus what was open at the start.
    :param check: seconds between looks.
    :param steady: before a full pass the count must have stopped moving for this long (at
        most 1 % more arrivals or difference in count, or 10), so that a fleet still
        reconnecting is not walked again and again; under constant churn (module rules) only
        the count must hold.
    """
    task_status.started()
    base_count, base_arrivals = population(), arrivals()
    frozen_arrivals = base_arrivals
    window: deque[tuple[int, int]] = deque(maxlen=max(2, round(steady / check) + 1))
    while True:
        await trio.sleep(check)
        count, arrived = population(), arrivals()
        window.append((count, arrived))
        if arrived - frozen_arrivals >= FREEZE_STEP:
            took = freeze_young()
            frozen_arrivals = arrived
            log.debug("gc: %d connections: young generations collected and frozen in %.0f ms",
                      count, took * 1000)
        ended = (arrived - base_arrivals) - (count - base_count)
        if len(window) < (window.maxlen or 0) or ended < max(
                SETTLE_MINIMUM, SETTLE_CHANGE * max(count, base_count)):
            continue
        quiet = max(10, count // 100)
        counts = [c for c, _ in window]
        if max(counts) - min(counts) > quiet:
            continue
        churning = ended >= max(SETTLE_MINIMUM, SETTLE_CHURN * max(count, base_count))
        if window[-1][1] - window[0][1] > quiet and not churning:
            continue
        took = settle_gc()
        log.info("gc: %d connections, %d ended since the last full collection: full "
                 "collection took %.0f ms, survivors frozen out of later passes", count, ended,
                 took * 1000)
        base_count, base_arrivals = count, arrived
        frozen_arrivals = arrived
