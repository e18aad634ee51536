"""Process-wide settings of the interpreter for long-running schedd processes.

CPython's cyclic garbage collector runs a young-generation pass every 700 net allocations by
default. A daemon holding 10,000 connections allocates a few small objects per message and
keeps most of what it allocates (sessions, channels, tasks), so those passes and the full
passes they trigger cost a third of its CPU at 3,000 heartbeats per second and add tens of
milliseconds to the dispatch tail (measured with ``schedd bench``; docs/benchmarks.md).
Reference counting frees almost everything the hot paths allocate; the collector is only
needed for cycles, so it can run far less often.

Raising the thresholds is not enough on its own: every object a connection keeps (its task,
coroutines, cancel scopes, socket, about fifty per connection) is walked again by each middle
and full pass until it reaches the oldest generation, and a pass over the objects of thousands
of connections that arrived together stops the process for hundreds of milliseconds, at a
moment nobody chose. :func:`serve_gc_settler` chooses the moment: once the number of
connections has changed by a fifth and then held steady for a few seconds, it runs one full
collection (reclaiming the cycles of connections that ended) and freezes every survivor out
of later passes (:func:`settle_gc`). Later passes then walk only what is newer than that.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

__all__ = ["GC_THRESHOLDS", "SETTLE_CHANGE", "SETTLE_MINIMUM", "serve_gc_settler", "settle_gc",
           "tune_gc"]

log = logging.getLogger(__name__)

#: Young-generation pass every 50,000 net allocations; older generations as by default.
GC_THRESHOLDS: Final = (50_000, 10, 10)
#: Settle once connections changed by this fraction of the count at the last settle …
SETTLE_CHANGE: Final = 0.2
#: … and by at least this many (below it a full pass is short anyway).
SETTLE_MINIMUM: Final = 500


def tune_gc() -> None:
    """Collect once, freeze what start-up built (modules, configuration, compiled scripts)
    out of every later pass, and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def settle_gc() -> tuple[int, float]:
    """One full collection over every object, frozen ones included, then freeze the survivors.

    Cycles that were frozen earlier and have become garbage since (the tasks of a connection
    that ended, say) are reclaimed here. Returns (objects frozen, seconds the pass took).
    """
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), time.perf_counter() - started


async def serve_gc_settler(
    population: Callable[[], int], arrivals: Callable[[], int], *, check: float = 1.0,
    steady: float = 5.0, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run :func:`settle_gc` after each large change of the connection count; never returns.

    :param population: the number of open connections now.
    :param arrivals: connections opened since start (monotonic): replaced connections leave
        garbage without changing the count, so they count as change too.
    :param check: seconds between looks.
    :param steady: the change must have stopped for this long (at most 1 % more arrivals or
        difference in count, or 10), so that a fleet still connecting is not walked again and
        again.
    """
    task_status.started()
    base_count, base_arrivals = 0, arrivals()
    window: deque[tuple[int, int]] = deque(maxlen=max(2, round(steady / check) + 1))
    while True:
        await trio.sleep(check)
        count, arrived = population(), arrivals()
        window.append((count, arrived))
        change = max(abs(count - base_count), arrived - base_arrivals)
        if len(window) < (window.maxlen or 0) or change < max(SETTLE_MINIMUM,
                                                             SETTLE_CHANGE * base_count):
            continue
        quiet = max(10, count // 100)
        counts = [c for c, _ in window]
        if window[-1][1] - window[0][1] > quiet or max(counts) - min(counts) > quiet:
            continue
        frozen, took = settle_gc()
        log.info("gc: %d connections (was %d): full collection took %.0f ms, %d objects "
                 "frozen out of later passes", count, base_count, took * 1000, frozen)
        base_count, base_arrivals = count, arrived
