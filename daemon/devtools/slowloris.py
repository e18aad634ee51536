"""The SLOWLORIS scenario: a probe client's submit→done latency, quiet and while connections that
never finish their handshake hold the daemon's listener.

::

    schedd bench --scenarios SLOWLORIS                   # WebSocket; --transport tcp for TCP
    python -m schedd.devtools.slowloris --url tcp://127.0.0.1:8766 --connections 2000 --seconds 20

Rules of this module:

* Loopback only, bounded: the attacker opens ``connections`` connections to a daemon on a
  loopback address and never finishes a handshake on any of them (WebSocket: the start of an
  HTTP upgrade request; TCP: a frame header whose body never comes). Whenever one is closed (by
  the daemon: a cap, a refusal, the handshake timeout) it opens it again, at once, until
  ``seconds`` have passed. It runs in a process of its own at the lowest CPU priority
  (``nice`` 19): on a real network the attacker's CPU is not the daemon host's, and here the
  probe client and the daemon share the machine with it.
* The probe is one client of the bench's kind submitting one job at a time (a job every
  ``interval`` seconds at most) to a small fleet: quiet for ``quiet_seconds``, then for
  ``attack_seconds`` while the attacker runs. The result is both phases' submit→done
  percentiles and the ratio of their p99 (the target: at most 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import trio

from schedd.api import is_loopback

if TYPE_CHECKING:
    from schedd.devtools.bench.clients import BenchClient, JobRecord, Recorder
    from schedd.devtools.bench.options import Options

__all__ = ["AttackStats", "attack", "main", "run"]

#: What an attacker's connection sends and then holds: a request head that never ends, a frame
#: header whose body never comes.
_OPENING: Final = {
    "ws": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
    "tcp": b"\x00\x00\x00\x40",
}


class AttackStats:
    """Counters of one attack: connections opened, and how they ended."""

    def __init__(self) -> None:
        self.opened = 0
        #: reset by the daemon before or within a second of opening (refused at accept)
        self.refused = 0
        #: closed by the daemon later (the handshake timeout)
        self.timed_out = 0
        #: connects that failed otherwise: error text -> count
        self.connect_errors: dict[str, int] = {}
        self.peak_open = 0
        self.open = 0

    def ended(self, opened: float, now: float) -> None:
        if now - opened < 1.0:
            self.refused += 1
        else:
            self.timed_out += 1

    def as_dict(self) -> dict[str, Any]:
        return {"opened": self.opened, "refused": self.refused, "timed_out": self.timed_out,
                "peak_open": self.peak_open, "connect_errors": self.connect_errors}


def _target(url: str) -> tuple[str, str, int]:
    """(kind, host, port) of a loopback ``ws://`` or ``tcp://`` URL; ``ValueError`` otherwise."""
    parts = urlsplit(url)
    kind = {"ws": "ws", "tcp": "tcp"}.get(parts.scheme)
    if kind is None or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected ws://host:port or tcp://host:port, got {url!r}")
    if not is_loopback(parts.hostname):
        raise ValueError(f"the slowloris runs against loopback addresses only, not {url!r}")
    return kind, parts.hostname, parts.port


def _reason(exc: BaseException) -> str:
    """The first OS error inside what ``open_tcp_stream`` raised (it wraps them in groups)."""
    while True:
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        inner = exc.__cause__ or (exc.exceptions[0] if isinstance(exc, BaseExceptionGroup)
                                  else None)
        if inner is None:
            return str(exc)[:80]
        exc = inner


async def _hold_one(kind: str, host: str, port: int, stop_at: float, stats: AttackStats) -> None:
    """One connection slot: open, send the opening, wait to be closed, open again at once."""
    opening = _OPENING[kind]
    while (opened := trio.current_time()) < stop_at:
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            reason = _reason(exc)
            if "reset" in reason:  # the daemon's reset came before the connect returned
                stats.refused += 1
                continue
            stats.connect_errors[reason] = stats.connect_errors.get(reason, 0) + 1
            await trio.sleep(0.01)
            continue
        stats.opened += 1
        stats.open += 1
        stats.peak_open = max(stats.peak_open, stats.open)
        try:
            with trio.move_on_after(max(0.0, stop_at - opened)):
                await stream.send_all(opening)
                while await stream.receive_some(4096):
                    pass  # an error message or an HTTP answer; then the close
                stats.ended(opened, trio.current_time())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            stats.ended(opened, trio.current_time())
        finally:
            stats.open -= 1
            await trio.aclose_forcefully(stream)


async def attack(url: str, connections: int, seconds: float) -> AttackStats:
    """Hold ``connections`` never-finished handshakes to ``url`` (loopback) for ``seconds``."""
    kind, host, port = _target(url)
    stats = AttackStats()
    stop_at = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(_hold_one, kind, host, port, stop_at, stats)
    return stats


async def _attack_process(url: str, connections: int, seconds: float) -> dict[str, Any]:
    """:func:`attack` in a process of its own (``python -m``); its counters."""
    command = [sys.executable, "-m", __name__, "--url", url, "--connections", str(connections),
               "--seconds", f"{seconds:g}"]
    proc = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"the attacker exited {proc.returncode}: "
                           f"{reason[-1] if reason else 'no output'}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class _CpuClock:
    """A process's CPU use between two calls, in % of one CPU."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._cpu, self._at = self._times(), time.perf_counter()

    def _times(self) -> float:
        from schedd.devtools.bench.measure import _proc_times

        return _proc_times(self._pid)

    def percent(self) -> float:
        cpu, at = self._times(), time.perf_counter()
        used = 100 * (cpu - self._cpu) / (at - self._at)
        self._cpu, self._at = cpu, at
        return round(used, 1)


async def _probe(client: BenchClient, recorder: Recorder, label: str, seconds: float,
                 interval: float) -> list[JobRecord]:
    """Submit one job at a time for ``seconds``, at most one per ``interval``; the records."""
    records = []
    stop_at = time.perf_counter() + seconds
    while time.perf_counter() < stop_at:
        record = await client.submit(recorder.new_id(label), waiter=True)
        records.append(record)
        assert record.event is not None
        with trio.move_on_after(10):  # a job without its done counts as lost
            await record.event.wait()
        await trio.sleep(max(0.0, interval - (time.perf_counter() - record.submitted)))
    return records


async def run(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scenario with the scale's parameters ``p``."""
    from schedd.devtools.bench.clients import Recorder, open_clients, open_fleet
    from schedd.devtools.bench.daemon import running_daemon
    from schedd.devtools.bench.measure import percentiles

    if opt.url is not None:
        raise ValueError("SLOWLORIS attacks a daemon it starts itself (no --url)")
    async with running_daemon(opt.settings) as daemon:
        url = daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, on_assign=recorder.on_assign), \
                open_clients(url, recorder, 1) as clients:
            await trio.sleep(p["warmup"])
            cpu = _CpuClock(daemon.pid)
            quiet = await _probe(clients[0], recorder, "quiet", p["quiet_seconds"], p["interval"])
            quiet_cpu = cpu.percent()
            opt.say(f"  SLOWLORIS: quiet: {len(quiet)} jobs; attack: {p['connections']} "
                    f"connections for {p['attack_seconds']:g} s")
            attacked: dict[str, Any] = {}

            async def attacker() -> None:
                attacked.update(await _attack_process(url, p["connections"],
                                                      p["attack_seconds"] + 2 * p["ramp"]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(attacker)
                await trio.sleep(p["ramp"])  # the attacker's connections open
                cpu.percent()
                loud = await _probe(clients[0], recorder, "attack", p["attack_seconds"],
                                    p["interval"])
                loud_cpu = cpu.percent()
            await recorder.drain()
    quiet_ms = percentiles([r.done_at - r.submitted for r in quiet if r.done_at])
    loud_ms = percentiles([r.done_at - r.submitted for r in loud if r.done_at])
    ratio = (round(loud_ms["p99"] / quiet_ms["p99"], 2)
             if quiet_ms.get("p99") and loud_ms.get("p99") else None)
    opt.say(f"  SLOWLORIS: submit->done p99 quiet {quiet_ms.get('p99')} ms, under attack "
            f"{loud_ms.get('p99')} ms: x{ratio}; daemon CPU {quiet_cpu} / {loud_cpu} %; "
            f"attacker {attacked}")
    summary = recorder.summary(list(recorder.jobs.values()))
    return {"nodes": p["nodes"], "connections": p["connections"],
            "quiet_submit_to_done_ms": quiet_ms, "attack_submit_to_done_ms": loud_ms,
            "p99_ratio": ratio, "daemon_cpu_pct_quiet": quiet_cpu,
            "daemon_cpu_pct_attack": loud_cpu, "attacker": attacked,
            "submitted": summary["submitted"], "done": summary["done"], "lost": summary["lost"],
            "errors": recorder.errors[:5], "error_count": len(recorder.errors)}


def main(argv: list[str] | None = None) -> int:
    """``python -m schedd.devtools.slowloris``: run the attacker alone; print its counters as
    one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m schedd.devtools.slowloris",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT or tcp://127.0.0.1:PORT")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    try:
        _target(args.url)
    except ValueError as exc:
        parser.error(str(exc))
    from schedd.devtools.sim import raise_fd_limit

    raise_fd_limit()
    os.nice(19)  # on a real network the attacker's CPU is not the daemon's host's
    stats = trio.run(attack, args.url, args.connections, args.seconds)
    print(json.dumps(stats.as_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
