"""What every scenario of ``schedd bench`` shares: its constants, percentiles, a process's
CPU and memory, the machine's description and the host probe run around the scenarios."""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from schedd.devtools import host_probe

SCENARIOS: Final = ("S1", "S2", "S3", "S4", "S5", "CHAOS", "SLOWLORIS", "SOAK", "BROWSE", "SDK",
                     "PIPE", "ORDER", "BLOB", "FAIR", "RETAIN", "PEER")
SCHEDD: Final = str(Path(sys.executable).parent / "schedd")
POOL: Final = "p"
PAYLOAD: Final = {"n": 1}
#: Seconds the host probe runs before the scenarios (and again after them), by scale.
HOST_PROBE_SECONDS: Final = {"full": 10.0, "tiny": 1.0}
#: Seconds to wait for the last jobs' done after a load ends; later ones count as lost.
DRAIN_TIMEOUT: Final = 15.0
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

Say = Callable[[str], None]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def percentiles(values_s: Sequence[float]) -> dict[str, float | int]:
    """p50/p90/p99/p99.9/max of durations in seconds, as milliseconds (3 decimals)."""
    if not values_s:
        return {"n": 0}
    ordered = sorted(values_s)
    n = len(ordered)

    def pick(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] * 1000, 3)

    return {"n": n, "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99),
            "p99.9": pick(0.999), "max": round(ordered[-1] * 1000, 3)}


def _proc_times(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def _proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process in kB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def host_speed(rounds: int = 5, n: int = 300_000) -> float:
    """Milliseconds a fixed pure-Python loop (integers, a dict, str) takes here, best of
    ``rounds``: lower is faster. Hosts that report the same CPU model differ in every figure
    (docs/decisions/0015-benchmark-method.md); this puts each run's host on one scale."""
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        host_probe.work(n)
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh
                          if line.startswith("model name")), model)
    except OSError:
        pass
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                           check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "redis": redis, "platform": platform.platform(), "python_loop_ms": host_speed()}


_PROBE_MODULE: Final = "schedd.devtools.host_probe"


def _probe_result(returncode: int | None, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    lines = stdout.decode(errors="replace").strip().splitlines()
    if returncode != 0 or not lines:
        reason = stderr.decode(errors="replace").strip().splitlines()
        return {"failed": f"exit {returncode}: {reason[-1] if reason else 'no output'}"}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        return {"failed": f"not JSON: {lines[-1][:200]!r}"}
    return result


async def probe_host(seconds: float) -> dict[str, Any]:
    """Run :mod:`schedd.devtools.host_probe` for ``seconds`` in a process of its own (in the
    real-time class where allowed); its result, or ``{"failed": reason}``: a probe that cannot
    run must not stop the bench."""
    command = [sys.executable, "-m", _PROBE_MODULE, "--seconds", f"{seconds:g}"]
    try:
        proc = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                      check=False)
    except OSError as exc:
        return {"failed": f"cannot start {command[0]}: {exc}"}
    return _probe_result(proc.returncode, proc.stdout, proc.stderr)


async def _read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    chunks = []
    while stream is not None and (chunk := await stream.receive_some()):
        chunks.append(chunk)
    return b"".join(chunks)


@asynccontextmanager
async def probing(into: dict[str, Any]) -> AsyncIterator[None]:
    """Run the host probe beside the block (``--until-stopped``); when the block ends, however
    it ends, stop it and put its result, or ``{"failed": reason}``, in ``into``."""
    command = [sys.executable, "-m", _PROBE_MODULE, "--until-stopped"]
    try:
        proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)
    except OSError as exc:
        into["failed"] = f"cannot start {command[0]}: {exc}"
        yield
        return
    stdout = stderr = b""
    try:
        # until it says "probing", a SIGTERM would kill it before it reports
        with trio.move_on_after(10):
            while proc.stdout is not None and b"\n" not in stdout:
                chunk = await proc.stdout.receive_some()
                if not chunk:
                    break
                stdout += chunk
        yield
    finally:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(10):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)  # it reports and exits
                stdout += await _read_all(proc.stdout)
                stderr = await _read_all(proc.stderr)
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        into.update(_probe_result(proc.returncode, stdout, stderr))
