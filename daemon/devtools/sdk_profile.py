"""``python -m schedd.devtools.sdk_profile``: CPU per job of the SDK's Node and Client.

Rules of this module:

* One daemon on a throw-away redis-server (:func:`~schedd.devtools.bench.running_daemon`), or
  the one ``--url`` names. One SDK ``Node`` (``--capacity`` slots, a handler that returns its
  payload) and one SDK ``Client`` run each in a process of its own (``python -m
  schedd.devtools.sdk_profile node|client ...``), on the event loop ``--backend`` names, so
  that the CPU of each is its own.
* The client connects, says ``go`` on stdout, submits ``--jobs`` jobs with at most
  ``--window`` of them submitted and not yet done at a time, waits for every result (each must
  be ``ok``), then says ``end``. The CPU (user + system, ``/proc/<pid>/stat``) each process
  used between the two words, divided by the jobs, is its CPU per job; the daemon's and
  redis-server's too when the daemon is this run's, and the script calls Redis ran per job.
* ``--profile node`` or ``--profile client`` profiles that side and prints its top entries
  (``--top``) after the figures. ``--profiler py-spy`` (the default) samples the process from
  outside (``py-spy record``, idle stacks left out, and so are those of the start-up): what
  it prints is each function's share of the samples, alone (its own code) and with what it
  calls, and that share of the side's CPU per job in µs. ``--profiler cprofile`` runs the
  side under ``cProfile`` (the client from ``go`` to ``end``, the node from its registration
  to its end) and prints pstats's table by own time; it slows the side it watches, whose CPU
  figure is then not comparable with an unprofiled run's.
* The figures are one run's; the host's noise is not averaged out here (run it again, or
  alternate the builds compared).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import anyio
import trio

from schedd.devtools.bench.daemon import running_daemon
from schedd.devtools.bench.measure import PAYLOAD, POOL
from schedd.devtools.bench.scenarios import script_calls_per_job

__all__ = ["main", "profile_run", "summarize_samples"]

_REGISTER_TIMEOUT: Final = 20.0
_CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
_GO: Final = "go"
_END: Final = "end"
_READY: Final = "ready"


# ---------------------------------------------------------------------------------------------
# The two sides, each in its own process.
# ---------------------------------------------------------------------------------------------


def _dump(profiler: cProfile.Profile, path: str, top: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    with open(path, "w") as fh:
        fh.write(out.getvalue())


async def _node(url: str, capacity: int, profile: str, top: int) -> None:
    from schedd.sdk import JobContext, Node

    async def handler(ctx: JobContext) -> Any:
        return ctx.payload

    profiler = cProfile.Profile() if profile else None
    node = Node(url, handler, pools=[POOL], capacity=capacity,
                node_id=f"sdk-profile-{os.getpid()}")
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(_REGISTER_TIMEOUT):
                await tg.start(node.run)
            print(_READY, flush=True)
            if profiler is not None:
                profiler.enable()
            async for _ in signals:
                break
            if profiler is not None:
                profiler.disable()
            tg.cancel_scope.cancel()
    if profiler is not None:
        _dump(profiler, profile, top)


async def _client(url: str, jobs: int, window: int, profile: str, top: int) -> None:
    from schedd.sdk import Client

    profiler = cProfile.Profile() if profile else None
    failed: list[str] = []
    async with Client.connect(url) as client:
        pending = iter(range(jobs))

        go = anyio.Event()

        async def worker() -> None:
            await go.wait()
            for _ in pending:
                handle = await client.submit(PAYLOAD, pools=[POOL])
                done = await handle.result()
                if not done.ok:
                    failed.append(f"job {done.job_id} failed: {done.error}")

        async with anyio.create_task_group() as tg:
            for _ in range(min(window, jobs)):  # started before the measure
                tg.start_soon(worker)
            await anyio.sleep(0.1)
            print(_GO, flush=True)
            if profiler is not None:
                profiler.enable()
            go.set()
        if profiler is not None:
            profiler.disable()
        print(_END, flush=True)
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed, the first: {failed[0]}")
    if profiler is not None:
        _dump(profiler, profile, top)


# ---------------------------------------------------------------------------------------------
# The run: a daemon, the two processes, the CPU each used.
# ---------------------------------------------------------------------------------------------


_PY_SPY: Final = str(Path(sys.executable).parent / "py-spy")
_SAMPLE_RATE: Final = 997  # samples a second: not a divisor of the loop's periods
_FRAME: Final = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


def _command(*args: object, sampled: str = "") -> list[str]:
    command = [sys.executable, "-m", "schedd.devtools.sdk_profile", *map(str, args)]
    if not sampled:
        return command
    return [_PY_SPY, "record", "--nonblocking", "-r", str(_SAMPLE_RATE), "-f", "raw", "-o",
            sampled, "--", *command]


def _function(frame: str) -> str:
    """``name (file)`` of a py-spy frame ``name (file:line)``, the file shortened."""
    found = _FRAME.match(frame)
    if found is None:
        return frame
    name, path = found.groups()
    for marker in ("site-packages/", "/daemon/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


# the frame every stack of the side's own run passes through
_RUNNING: Final = re.compile(r";main \([^;]*sdk_profile\.py:\d+\);")
# the event loops' waits for I/O, which py-spy does not always see as idle
_WAITING: Final = ("EpollIOManager.get_events ", "EpollSelector.select ")


def summarize_samples(raw: str, us_per_job: float, top: int) -> str:
    """The table of a py-spy raw file (``frame;frame;... count`` per line, the innermost
    frame last): each function's share of the samples on its own (the innermost frame) and
    with its callees (anywhere in the stack, once per stack), and those shares of
    ``us_per_job``. Stacks outside :func:`main` (start-up: imports, module code) are left
    out, and so are the event loop's waits for I/O (:data:`_WAITING`)."""
    own: Counter[str] = Counter()
    total_with: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit() or _RUNNING.search(stack) is None:
            continue  # start-up: imports and module code, outside the side's run
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        if frames[-1].startswith(_WAITING):
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total_with[name] += count
    if not samples:
        return "no samples"
    lines = [f"{samples} samples; own = the function's code, with = and what it calls",
             f"{'own %':>6} {'own us':>7} {'with %':>7} {'with us':>8}  function"]
    for name, count in own.most_common(top):
        lines.append(f"{100 * count / samples:6.1f} {us_per_job * count / samples:7.1f} "
                     f"{100 * total_with[name] / samples:7.1f} "
                     f"{us_per_job * total_with[name] / samples:8.1f}  {name}")
    lines.append("by time with callees:")
    for name, count in total_with.most_common(top):
        lines.append(f"{'':6} {'':7} {100 * count / samples:7.1f} "
                     f"{us_per_job * count / samples:8.1f}  {name}")
    return "\n".join(lines)


async def _read_line(stream: trio.abc.ReceiveStream, buf: bytearray) -> str:
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise RuntimeError("the process ended before saying what it was waiting for")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode().strip()


async def _expect(stream: trio.abc.ReceiveStream, buf: bytearray, word: str) -> None:
    line = await _read_line(stream, buf)
    while not line or line.startswith("py-spy>"):  # the sampler's notes, on the same stdout
        line = await _read_line(stream, buf)
    if line != word:
        raise RuntimeError(f"expected {word!r} from the process, got {line!r}")


def _cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _python_pid(pid: int) -> int:
    """The Python process: ``pid`` itself, or its child when ``pid`` is py-spy's."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        if not fh.read().split(b"\0", 1)[0].endswith(b"py-spy"):
            return pid
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return int(fh.read().split()[0])


async def profile_run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the daemon (unless ``args.url``), the node and the client; the CPU per job of each."""
    async with running_daemon(url=args.url) as daemon:
        url = args.url or daemon.url(args.transport)
        out = f"{args.out}.{args.profile}"
        inside = args.profiler == "cprofile"
        node_prof = out if args.profile == "node" and inside else "-"
        client_prof = out if args.profile == "client" and inside else "-"
        node_spy = out if args.profile == "node" and not inside else ""
        client_spy = out if args.profile == "client" and not inside else ""
        node = await trio.lowlevel.open_process(
            _command("node", url, args.backend, args.capacity, node_prof, args.top,
                     sampled=node_spy),
            stdout=subprocess.PIPE)
        try:
            assert node.stdout is not None
            node_buf = bytearray()
            with trio.fail_after(_REGISTER_TIMEOUT + 10):
                await _expect(node.stdout, node_buf, _READY)
            commands0 = await daemon.command_counts() if daemon is not None else {}
            client = await trio.lowlevel.open_process(
                _command("client", url, args.backend, args.jobs, args.window, client_prof,
                         args.top, sampled=client_spy),
                stdout=subprocess.PIPE)
            assert client.stdout is not None
            buf = bytearray()
            await _expect(client.stdout, buf, _GO)
            pids = {"client": _python_pid(client.pid), "node": _python_pid(node.pid)}
            if daemon is not None:
                pids.update(daemon.processes())
            cpu0, t0 = {name: _cpu(pid) for name, pid in pids.items()}, time.perf_counter()
            await _expect(client.stdout, buf, _END)
            cpu1, t1 = {name: _cpu(pid) for name, pid in pids.items()}, time.perf_counter()
            commands1 = await daemon.command_counts() if daemon is not None else {}
            if await client.wait() != 0:
                raise RuntimeError(f"the client exited {client.returncode}")
        finally:
            if node.returncode is None:
                # to the node itself: py-spy writes its file once the node has ended
                os.kill(_python_pid(node.pid), signal.SIGTERM)
            with trio.move_on_after(10):
                await node.wait()
            if node.returncode is None:
                node.kill()
                await node.wait()
    result: dict[str, Any] = {
        "backend": args.backend, "transport": args.transport, "jobs": args.jobs,
        "window": args.window, "capacity": args.capacity,
        "seconds": round(t1 - t0, 3), "jobs_per_s": round(args.jobs / (t1 - t0)),
        "cpu_us_per_job": {name: round(1e6 * (sum(cpu1[name]) - sum(cpu0[name])) / args.jobs, 1)
                           for name in pids},
        "system_us_per_job": {name: round(1e6 * (cpu1[name][1] - cpu0[name][1]) / args.jobs, 1)
                              for name in pids},
        # the Redis script calls per job (from before the client connected)
        "script_calls_per_job": script_calls_per_job(commands0, commands1, args.jobs),
        "profiled": args.profile or None,
    }
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m schedd.devtools.sdk_profile",
        description="CPU per job of the SDK's Node and Client (and the daemon's) over a burst "
                    "of no-op jobs; optionally a cProfile of one side.")
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--window", type=int, default=500,
                        help="jobs submitted and not yet done at most (default 500)")
    parser.add_argument("--capacity", type=int, default=50, help="the node's slots")
    parser.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    parser.add_argument("--transport", choices=("ws", "tcp"), default="ws")
    parser.add_argument("--url", help="an existing daemon (its CPU is then not measured)")
    parser.add_argument("--profile", choices=("node", "client"),
                        help="profile that side and print its top entries")
    parser.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    parser.add_argument("--top", type=int, default=30, help="profile entries printed")
    parser.add_argument("--out", default="/tmp/schedd-sdk-profile",
                        help="where the profile's text goes (with .node or .client)")
    return parser


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("node", "client"):
        role, url, backend, *rest = argv
        if role == "node":
            capacity, profile, top = rest
            anyio.run(_node, url, int(capacity), "" if profile == "-" else profile, int(top),
                      backend=backend)
        else:
            jobs, window, profile, top = rest
            anyio.run(_client, url, int(jobs), int(window), "" if profile == "-" else profile,
                      int(top), backend=backend)
        return
    args = _parser().parse_args(argv)
    result = trio.run(profile_run, args)
    print(json.dumps(result))
    if args.profile:
        with open(f"{args.out}.{args.profile}") as fh:
            text = fh.read()
        if args.profiler == "py-spy":
            text = summarize_samples(text, result["cpu_us_per_job"][args.profile], args.top)
        print(text)


if __name__ == "__main__":
    main(sys.argv[1:])
