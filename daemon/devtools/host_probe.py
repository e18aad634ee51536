"""Find the moments this host takes the CPU away from its guest.

On the shared virtual machines the bench runs on, the hypervisor stops a guest's vCPUs now and
then for several milliseconds, often in bursts at a steady period
(docs/decisions/0015-benchmark-method.md).
No program in the guest can answer a message while its vCPU is stopped, so such
stalls set a floor under every latency tail the bench measures, whatever the daemon does.

The probe runs a fixed slice of pure-Python work (about half a millisecond) every 20 ms and
times each slice. A slice that takes many times the fastest ones overlapped a stall. Run as its
own process, it asks for the real-time scheduling class first (``SCHED_FIFO``, when the caller
may have it), so that no ordinary process of the guest can delay it: a slow slice then means
the vCPU itself was not running (or was busy with interrupts). Without the real-time class
(``"realtime": false``) a slice can also wait behind another process of the guest, which the
probe cannot tell from a stall. The bench runs it before the scenarios, while nothing else of
its own runs, and beside every scenario on request (it then takes ~2.5 % of one CPU, at a
priority above everything it measures). It reports::

    python -m schedd.devtools.host_probe [--seconds 10 | --until-stopped] [--json FILE]

(``--until-stopped``: until SIGTERM or SIGINT, then report; it prints a line ``probing`` first,
once a signal no longer kills it. ``schedd bench --probe-during`` runs it so beside every
scenario.)

``samples`` slices, the fastest slice's ``work_ms`` (its 5th percentile), the ``stalls`` (slices
at least :data:`STALL_FACTOR` times that and :data:`MIN_STALL_MS` longer), the longest stall's
excess in ms, the ``bursts`` the stalls came in (stalls less than :data:`BURST_GAP` s apart),
and the median ``burst_period_s`` between burst starts. (How fast the CPU runs otherwise is the
bench's reference loop; a slice right after a sleep runs on cold caches, so the probe's own
slices vary too much to tell that.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

#: iterations of the work slice: about 0.5 ms on a 2-vCPU host of the kind the bench runs on
WORK_ITERATIONS: Final = 2500
#: seconds between the starts of two slices
EVERY: Final = 0.02
#: a slice that took this many times the fastest ones overlapped a stall …
STALL_FACTOR: Final = 4.0
#: … when it also took this many milliseconds more than they did
MIN_STALL_MS: Final = 2.0
#: stalls closer than this (seconds) belong to one burst
BURST_GAP: Final = 0.3

#: (start, seconds the slice took)
Sample = tuple[float, float]


def work(n: int = WORK_ITERATIONS) -> int:
    """The slice: integers, a dict and str (also the bench's reference loop, ``host_speed``)."""
    total, seen = 0, {}
    for i in range(n):
        seen[i & 1023] = i
        total += len(str(i)) + seen[i & 511]
    return total


def sample(seconds: float, *, every: float = EVERY, iterations: int = WORK_ITERATIONS,
           clock: Callable[[], float] = time.perf_counter,
           sleep: Callable[[float], None] = time.sleep,
           stop: Callable[[], bool] = lambda: False) -> list[Sample]:
    """Time one slice every ``every`` seconds for ``seconds``, or until ``stop()`` says so
    after a slice (slice starts on a fixed grid, so a stall does not shift the later ones)."""
    samples: list[Sample] = []
    due = clock()
    end = due + seconds
    while due < end:
        delay = due - clock()
        if delay > 0:
            sleep(delay)
        started = clock()
        work(iterations)
        samples.append((started, clock() - started))
        if stop():
            break
        due += every
    return samples


def summarize(samples: Sequence[Sample]) -> dict[str, Any]:
    """What :func:`sample` saw (the module's docstring names the figures)."""
    if not samples:
        raise ValueError("no samples: the probe ran for less than one slice")
    ordered = sorted(d for _, d in samples)
    base = ordered[len(ordered) // 20]
    stalls = [(t, d) for t, d in samples
              if d >= STALL_FACTOR * base and (d - base) * 1000 >= MIN_STALL_MS]
    starts: list[float] = []
    last = -float("inf")
    for t, _ in stalls:
        if t - last >= BURST_GAP:
            starts.append(t)
        last = t
    periods = [b - a for a, b in itertools.pairwise(starts)]
    return {
        "samples": len(samples),
        "seconds": round(samples[-1][0] + samples[-1][1] - samples[0][0], 2),
        "work_ms": round(base * 1000, 3),
        "stalls": len(stalls),
        "longest_stall_ms": round(max((d - base for _, d in stalls), default=0.0) * 1000, 1),
        "bursts": len(starts),
        "burst_period_s": round(statistics.median(periods), 2) if periods else None,
    }


def realtime() -> bool:
    """Move this process to the lowest real-time priority; False where that is not allowed
    (no privilege, or no such scheduling class on this system)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except (AttributeError, OSError):
        return False
    return True


def describe(result: dict[str, Any]) -> str:
    """One line for the bench's table."""
    if "failed" in result:
        return f"probe failed: {result['failed']}"
    stalls, bursts = result["stalls"], result["bursts"]
    text = (f"{stalls} stall{'' if stalls == 1 else 's'} in {result['seconds']} s (longest "
            f"{result['longest_stall_ms']} ms), {bursts} burst{'' if bursts == 1 else 's'}")
    if result["burst_period_s"] is not None:
        text += f" every {result['burst_period_s']} s"
    # the fixed slice's usual time: how fast the host ran (a slower host without stalls shows
    # here only; compare it between the probes of a run)
    text += f"; slice {result['work_ms']} ms"
    if not result["realtime"]:
        text += " (not real-time)"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    how_long = parser.add_mutually_exclusive_group()
    how_long.add_argument("--seconds", type=float, default=10.0,
                          help="how long to probe (default: 10)")
    how_long.add_argument("--until-stopped", action="store_true",
                          help="probe until SIGTERM or SIGINT, then report")
    parser.add_argument("--json", help="write the result here (default: stdout only)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0, not {args.seconds:g}")
    stopped: list[int] = []
    seconds = args.seconds
    if args.until_stopped:
        seconds = math.inf
        for signum in (signal.SIGTERM, signal.SIGINT):
            # noted, not raised: the slice in progress ends, and the result is still printed
            signal.signal(signum, lambda signum, frame: stopped.append(signum))
    rt = realtime()
    if args.until_stopped:
        print("probing", flush=True)
    try:
        result = summarize(sample(seconds, stop=lambda: bool(stopped))) | {"realtime": rt}
    except ValueError as exc:
        parser.error(str(exc))
    text = json.dumps(result)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
