"""Process-wide settings of the interpreter for long-running schedd processes.

CPython's cyclic garbage collector runs a young-generation pass every 700 net allocations by
default. A daemon holding 10,000 connections allocates a few small objects per message and
keeps most of what it allocates (sessions, channels, tasks), so those passes and the full
passes they trigger cost a third of its CPU at 3,000 heartbeats per second and add tens of
milliseconds to the dispatch tail (measured with ``schedd bench``; docs/benchmarks.md).
Reference counting frees almost everything the hot paths allocate; the collector is only
needed for cycles, so it can run far less often.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLDS", "tune_gc"]

#: Young-generation pass every 50,000 net allocations; older generations as by default.
GC_THRESHOLDS: Final = (50_000, 10, 10)


def tune_gc() -> None:
    """Collect once, freeze what start-up built (modules, configuration, compiled scripts)
    out of every later pass, and raise the collection thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
