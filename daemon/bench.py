"""``schedd bench``: the daemon's speed, measured end to end (docs/benchmarks.md has the numbers).

Rules of this module:

* Real parts only: a throw-away ``redis-server`` on a free port, the daemon as a ``schedd run``
  subprocess (ready when it says ``READY=1`` on its ``NOTIFY_SOCKET``), simulated nodes
  (:mod:`schedd.sim`) and lean clients speaking the wire protocol over the real transports. Each
  scenario gets a fresh Redis and daemon, so no scenario measures another's leftovers.
* One clock: nodes and clients live in this process, so every latency is a difference of
  ``time.perf_counter()`` stamps taken here (submit sent, ``assign`` received, ``done``
  received). The daemon's own timings are not used.
* Every scenario counts its jobs: a job submitted and accepted must reach exactly one ``done``;
  ``lost`` is the number that did not within the drain timeout (the smoke test asserts 0).
* Timings are reported, never asserted.

Scenarios: S1 dispatch latency (open loop), S2 throughput (closed loop, concurrency raised until
p99 passes 50 ms), S3 heartbeat scale (daemon CPU, RSS, heartbeat script calls per second,
dispatch p99 under that load), S4 script cost (:mod:`schedd.benchmarks.script_cost`), S5
failover (S1's load with jobs that take time, nodes dropped or silenced while they run: time
to reassignment, jobs lost).

Before the scenarios, with nothing of the bench running, :mod:`schedd.benchmarks.host_probe`
looks for moments the host stops this machine's CPUs (``machine.host_stalls``): such stalls put
a floor under every latency tail measured here. It runs again after the scenarios
(``machine.host_stalls_after``): a longer usual slice then than before means the host still
runs slower at the end of the run (a slowdown that has passed by then does not show).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
import trio

from schedd.benchmarks import host_probe
from schedd.channel import Channel, ChannelClosed
from schedd.protocol import PROTOCOL_VERSION
from schedd.redis_process import RedisServer, free_port
from schedd.sdk.connect import open_channel
from schedd.sim import Fleet, SimNode, parse_duration, raise_fd_limit

__all__ = ["SCENARIOS", "BenchClient", "DaemonProcess", "Recorder", "run_bench"]

SCENARIOS: Final = ("S1", "S2", "S3", "S4", "S5", "CHAOS", "SOAK")
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
    ``rounds``: lower is faster. Hosts that report the same CPU model have differed threefold
    in every figure (docs/benchmarks.md); this puts each run's host on one scale."""
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


_PROBE_MODULE: Final = "schedd.benchmarks.host_probe"


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
    """Run :mod:`schedd.benchmarks.host_probe` for ``seconds`` in a process of its own (in the
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


# ---------------------------------------------------------------------------------------------
# The daemon under test
# ---------------------------------------------------------------------------------------------


#: one ``--set``: (section, key, TOML value as written)
Setting = tuple[str, str, str]
#: sections the bench sets itself and ``--set`` may not change
_FIXED_SECTIONS: Final = ("redis", "plugins")


def parse_setting(text: str) -> Setting:
    """``SECTION.KEY=VALUE`` (VALUE in TOML: ``0.05``, ``true``, ``"text"``) as a
    :data:`Setting`. Raises ``ValueError`` saying what is wrong; whether the daemon knows the
    setting and accepts the value it says itself when it starts."""
    import tomllib

    name, equals, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    section, key, value = section.strip(), key.strip(), value.strip()
    if not equals or not dot or not section or not key or not value or "." in key:
        raise ValueError(f"expected SECTION.KEY=VALUE (nodes.heartbeat_flush=0.05), got {text!r}")
    if section in _FIXED_SECTIONS:
        raise ValueError(f"[{section}] is set by the bench itself; --set cannot change it")
    try:
        tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{name.strip()}: {value!r} is not a TOML value ({exc}); "
                         'quote text: key="text"') from None
    return section, key, value


class DaemonProcess:
    """A redis-server and a ``schedd run`` process using it, from a temporary sched.toml.

    :param settings: ``(section, key, TOML value)`` set in the generated configuration over
        the bench's own values (``schedd bench --set``; :func:`parse_setting`).
    """

    def __init__(self, settings: Sequence[Setting] = (), *,
                 heartbeat_interval: float = 1.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schedd-bench-"))
        self.redis = RedisServer()
        self.ws_port, self.tcp_port = free_port(), free_port()
        self.ws = f"ws://127.0.0.1:{self.ws_port}"
        self.tcp = f"tcp://127.0.0.1:{self.tcp_port}"
        self.heartbeat_interval = heartbeat_interval
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: trio.socket.SocketType | None = None
        self.log = self.dir / "daemon.log"

    def url(self, transport: str) -> str:
        return self.ws if transport == "ws" else self.tcp

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _config(self) -> str:
        # Limits meant for one abusive peer are raised: the bench's few client connections
        # carry the whole load on purpose.
        sections: dict[str, dict[str, str]] = {
            "schedd": {"log_level": '"warning"'},
            "redis": {"url": f'"{self.redis.url}"'},
            "nodes": {"heartbeat_interval": repr(self.heartbeat_interval)},
            "limits": {"max_inflight_submits": "100000", "max_messages_per_second": "1000000",
                       "idle_timeout": "600"},
            "jobs": {"queue_timeout": "120"},
        }
        for section, key, value in self.settings:
            sections.setdefault(section, {})[key] = value
        return "".join(
            f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
            for section, keys in sections.items()
        ) + (
            "[plugins]\nenabled = [\"transport_ws\", \"transport_tcp\"]\n"
            f"[plugins.transport_ws]\nlisten = \"127.0.0.1:{self.ws_port}\"\n"
            f"[plugins.transport_tcp]\nlisten = \"127.0.0.1:{self.tcp_port}\"\n"
        )

    async def start(self) -> DaemonProcess:
        self.redis.start()
        config = self.dir / "sched.toml"
        config.write_text(self._config())
        notify_path = str(self.dir / "notify.sock")
        sock = self.notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(notify_path)
        # configured by the generated sched.toml only: an override from the caller's shell
        # (SCHEDD_REDIS__URL, say) must not point the bench daemon elsewhere, and the bench's
        # own variables (SCHEDD_BENCH_KEEP) are not settings the daemon would accept
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDD_")}
        env["NOTIFY_SOCKET"] = notify_path
        # A start-up step (not on a measured path): blocking calls are fine here.
        with open(self.log, "wb") as log:  # noqa: ASYNC230
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [SCHEDD, "run", "-c", str(config)], env=env, stdout=log,
                stderr=subprocess.STDOUT)
        with trio.fail_after(30):
            notes = ""
            while "READY=1" not in notes.split("\n"):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"schedd run exited {self.proc.returncode}:\n"
                                       + self.log.read_text(errors="replace")[-2000:])
                with trio.move_on_after(0.2):
                    notes += "\n" + (await sock.recv(4096)).decode()
        return self

    async def drain_notifications(self) -> None:
        """Read (and drop) the daemon's later notifications (STATUS, WATCHDOG) so that its
        sends do not fail; runs until cancelled."""
        assert self.notify is not None
        while True:
            await self.notify.recv(4096)

    def stop(self) -> None:
        """Kill the daemon and Redis; remove the temporary files (kept when ``keep``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()
        self.redis.stop()
        shutil.rmtree(self.redis.dir, ignore_errors=True)
        if not os.environ.get("SCHEDD_BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    async def redis_command(self, *args: str) -> bytes:
        from schedd.store import open_store

        async with open_store(self.redis.url) as store:
            reply: bytes = await store.execute(*args)
            return reply

    async def script_holds(self, names: Sequence[str], seconds: float) -> list[float]:
        """How long Redis ran each call of one script (``names`` as for
        :meth:`count_script_calls`) during ``seconds``, in seconds, from its SLOWLOG (every
        command logged for the window): Redis runs nothing else meanwhile, so this is how long
        each call held it."""
        from schedd.store import open_store

        wanted = {name.encode() for name in names}
        async with open_store(self.redis.url) as store:
            await store.execute("CONFIG", "SET", "slowlog-max-len", "1000000")
            await store.execute("CONFIG", "SET", "slowlog-log-slower-than", "0")
            await store.execute("SLOWLOG", "RESET")
            try:
                await trio.sleep(seconds)
            finally:
                await store.execute("CONFIG", "SET", "slowlog-log-slower-than", "-1")
            entries = await store.execute("SLOWLOG", "GET", "-1")
            await store.execute("SLOWLOG", "RESET")
        # an entry: id, unix time, microseconds, [command, args...], client address, name
        return [entry[2] / 1e6 for entry in entries
                if len(entry[3]) > 1 and entry[3][1] in wanted]

    async def command_counts(self) -> dict[str, int]:
        """Calls of every command Redis ran so far (INFO commandstats: ``fcall``, ``evalsha``,
        ...; the one connection this opens adds a ``hello``/``ping`` and the ``info``)."""
        from schedd.benchmarks.script_cost import command_stats

        stats = command_stats(await self.redis_command("INFO", "commandstats"))
        return {name: int(stat["calls"]) for name, stat in stats.items()}

    def processes(self) -> dict[str, int]:
        """The pids of the daemon and of its redis-server."""
        assert self.redis.proc is not None
        return {"daemon": self.pid, "redis": self.redis.proc.pid}

    async def count_script_calls(self, names: Sequence[str], seconds: float) -> int:
        """Calls of one script (``FCALL`` by function name or ``EVALSHA`` by SHA: ``names``)
        during ``seconds``, counted from ``redis-cli MONITOR`` (a C process: parsing the stream
        here would load the bench process)."""
        monitor = subprocess.Popen(  # noqa: ASYNC220
            ["redis-cli", "-p", str(self.redis.port), "monitor"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert monitor.stdout is not None
        grep = subprocess.Popen(  # noqa: ASYNC220
            ["grep", "-c", "-F", *(f"-e\"{name}\"" for name in names)], stdin=monitor.stdout,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        monitor.stdout.close()
        try:
            await trio.sleep(seconds)
        finally:
            monitor.terminate()
            monitor.wait()
        out, _ = grep.communicate(timeout=10)
        return int(out.strip() or 0)


@asynccontextmanager
async def running_daemon(settings: Sequence[Setting] = (), *, heartbeat_interval: float = 1.0,
                         url: str | None = None) -> Any:
    """A fresh daemon (or none when ``url`` names an existing one: yields None)."""
    if url is not None:
        yield None
        return
    daemon = DaemonProcess(settings, heartbeat_interval=heartbeat_interval)
    try:
        await daemon.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.drain_notifications)
            yield daemon
            nursery.cancel_scope.cancel()
    finally:
        daemon.stop()


# ---------------------------------------------------------------------------------------------
# Clients and the record of every job
# ---------------------------------------------------------------------------------------------


@attrs.define
class JobRecord:
    submitted: float
    node_at: float = 0.0  # first assign received by a node
    done_at: float = 0.0
    state: str = ""
    attempts: int = 0
    done_node: str = ""  # the node whose result finished the job
    reassigned: list[tuple[float, int, str]] = attrs.field(factory=list)  # (t, attempt, node)
    event: trio.Event | None = None


class Recorder:
    """Every job of a scenario, stamped with one monotonic clock."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRecord] = {}
        self.errors: list[str] = []
        self.duplicates = 0
        self._seq = 0

    def new_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq:07d}"

    def on_assign(self, job_id: str, attempt: int, node: SimNode) -> None:
        now = time.perf_counter()
        record = self.jobs.get(job_id)
        if record is None:
            return
        if not record.node_at:
            record.node_at = now
        if attempt > 1:
            record.reassigned.append((now, attempt, node.node_id))

    def on_done(self, message: dict[str, Any]) -> None:
        record = self.jobs.get(message["job_id"])
        if record is None:
            return
        if record.done_at:
            self.duplicates += 1
            return
        record.done_at = time.perf_counter()
        record.state = message.get("state", "")
        record.attempts = message.get("attempts", 0)
        record.done_node = message.get("node") or ""
        if record.event is not None:
            record.event.set()

    # -- summaries -----------------------------------------------------------------------------

    def window(self, start: float = 0.0, end: float = math.inf) -> list[JobRecord]:
        return [r for r in self.jobs.values() if start <= r.submitted < end]

    @staticmethod
    def summary(records: Sequence[JobRecord]) -> dict[str, Any]:
        done = [r for r in records if r.done_at]
        return {
            "submitted": len(records),
            "done": len(done),
            "ok": sum(1 for r in done if r.state == "done"),
            "not_ok": sum(1 for r in done if r.state != "done"),
            "lost": len(records) - len(done),
            "retried": sum(1 for r in records if r.reassigned),
            "submit_to_node_ms": percentiles([r.node_at - r.submitted for r in records
                                              if r.node_at]),
            "submit_to_done_ms": percentiles([r.done_at - r.submitted for r in done]),
        }

    async def drain(self, seconds: float = DRAIN_TIMEOUT) -> None:
        """Wait until every submitted job has its done, or ``seconds``."""
        with trio.move_on_after(seconds):
            while any(not r.done_at for r in self.jobs.values()):  # noqa: ASYNC110 (polls counts)
                await trio.sleep(0.05)


class BenchClient:
    """A lean client connection: submits with the bench's job ids, records every done."""

    def __init__(self, url: str, recorder: Recorder) -> None:
        self.url = url
        self.recorder = recorder
        self.channel: Channel | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_channel(self.url, connect_timeout=30) as channel:
            await channel.send(orjson.dumps({"type": "hello", "role": "client",
                                             "version": PROTOCOL_VERSION, "name": "bench"}))
            welcome = orjson.loads(await channel.receive())
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"hello refused: {welcome}")
            self.channel = channel
            task_status.started()
            recorder = self.recorder
            try:
                while True:
                    message = orjson.loads(await channel.receive())
                    kind = message.get("type")
                    if kind == "done":
                        recorder.on_done(message)
                    elif kind == "error":
                        recorder.errors.append(f"{message.get('code')}: {message.get('message')}")
            except ChannelClosed:
                pass

    async def submit(self, job_id: str, *, waiter: bool = False) -> JobRecord:
        assert self.channel is not None
        frame = orjson.dumps({"type": "submit", "job_id": job_id, "pools": [POOL],
                              "payload": PAYLOAD})
        record = JobRecord(submitted=time.perf_counter(),
                           event=trio.Event() if waiter else None)
        self.recorder.jobs[job_id] = record
        await self.channel.send(frame)
        return record


@asynccontextmanager
async def open_clients(url: str, recorder: Recorder, count: int) -> Any:
    async with trio.open_nursery() as nursery:
        clients = [BenchClient(url, recorder) for _ in range(count)]
        for client in clients:
            await nursery.start(client.run)
        yield clients
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_fleet(url: str, nodes: int, say: Say, **kwargs: Any) -> Any:
    raise_fd_limit()
    started = time.perf_counter()
    fleet = Fleet([url], nodes, pools=[POOL], **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        say(f"  {nodes} nodes registered in {time.perf_counter() - started:.1f} s")
        yield fleet
        nursery.cancel_scope.cancel()


async def open_loop(clients: Sequence[BenchClient], recorder: Recorder, rate: float,
                    seconds: float, say: Say, label: str) -> None:
    """Submit ``rate`` jobs per second for ``seconds`` regardless of completions (open loop),
    round-robin over the clients; print progress every second."""
    interval = 1.0 / rate
    total = int(rate * seconds)
    start = trio.current_time()
    next_report = start + 1.0
    for i in range(total):
        at = start + i * interval
        now = trio.current_time()
        if at > now:
            await trio.sleep_until(at)
        await clients[i % len(clients)].submit(recorder.new_id(label))
        if now >= next_report:
            next_report += 1.0
            done = sum(1 for r in recorder.jobs.values() if r.done_at)
            say(f"  {label}: {now - start:.0f}/{seconds:g} s, submitted {i + 1}, done {done}")


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------

SCALES: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "full": {
        "S1": {"nodes": 1000, "rate": 500, "seconds": 30, "clients": 4, "warmup": 3.0},
        "S2": {"nodes": 200, "capacity": 8, "seconds": 8,
               "concurrency": [4, 8, 16, 32, 64, 128, 256]},
        "S3": {"nodes": 10000, "idle_seconds": 40, "monitor_seconds": 10, "rate": 500,
               "load_seconds": 20, "clients": 4},
        "S4": {"sizes": [10, 1000, 10000], "calls": 5000},
        # S1's fleet, rate, length and clients, with jobs that take time so that a killed node
        # holds work: "nodes killed during S1"
        "S5": {"nodes": 1000, "rate": 500, "seconds": 30, "clients": 4, "warmup": 3.0,
               "duration": "uniform:0.5,1.5", "kills": 10, "heartbeat_interval": 1.0},
        "CHAOS": {"nodes": 200, "jobs": 5000, "instances": 3, "settle": 120.0},
        # 500 nodes reconnecting ~10 times a second, 245 jobs/s, 1 % failing
        "SOAK": {"nodes": 500, "disconnect_rate": 0.02, "rate": 245, "clients": 1,
                 "fail_rate": 0.01, "warmup": 30.0, "phase_seconds": 60.0, "sample_every": 1.0},
    },
    "tiny": {
        "S1": {"nodes": 50, "rate": 200, "seconds": 2, "clients": 2, "warmup": 0.0},
        "S2": {"nodes": 20, "capacity": 4, "seconds": 1, "concurrency": [4, 16]},
        "S3": {"nodes": 300, "idle_seconds": 3, "monitor_seconds": 1.5, "rate": 100,
               "load_seconds": 1.5, "clients": 2},
        "S4": {"sizes": [10, 200], "calls": 200},
        "S5": {"nodes": 30, "rate": 50, "seconds": 3, "clients": 2, "warmup": 0.0,
               "duration": "uniform:0.3,0.6", "kills": 2, "heartbeat_interval": 0.25},
        "CHAOS": {"nodes": 20, "jobs": 200, "instances": 3, "settle": 60.0},
        "SOAK": {"nodes": 20, "disconnect_rate": 0.25, "rate": 50, "clients": 1,
                 "fail_rate": 0.01, "warmup": 1.0, "phase_seconds": 2.0, "sample_every": 0.25},
    },
}


@attrs.define
class Options:
    scale: str = "tiny"
    transport: str = "ws"
    url: str | None = None
    #: settings of the daemons the bench starts (S1, S2, S3, S5): ``--set``
    settings: tuple[Setting, ...] = ()
    #: run the host probe beside every scenario (``--probe-during``)
    probe_during: bool = False
    say: Say = _say


async def s1_dispatch(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    async with running_daemon(opt.settings, url=opt.url) as daemon:
        url = opt.url or daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, on_assign=recorder.on_assign), \
                open_clients(url, recorder, p["clients"]) as clients:
            # Steady state: the daemon and the fleet freeze the fleet's objects out of the
            # collector's passes within a second of the last connection (schedd.runtime); that
            # last young-generation pass is a one-time pause S1 leaves out.
            await trio.sleep(p["warmup"])
            pids = {**(daemon.processes() if daemon is not None else {}), "bench": os.getpid()}
            commands0 = await daemon.command_counts() if daemon is not None else {}
            cpu0 = {name: _proc_times(pid) for name, pid in pids.items()}
            await open_loop(clients, recorder, p["rate"], p["seconds"], opt.say, "S1")
            cpu1 = {name: _proc_times(pid) for name, pid in pids.items()}
            commands1 = await daemon.command_counts() if daemon is not None else {}
            await recorder.drain()
        jobs = len(recorder.jobs)
        result = {"nodes": p["nodes"], "rate": p["rate"], "seconds": p["seconds"],
                  "warmup_s": p["warmup"],
                  **recorder.summary(list(recorder.jobs.values())),
                  # what a job costs, whatever the host's speed did to the latencies: the CPU
                  # each process spent during the open loop, and the script calls Redis ran
                  "cpu_us_per_job": {name: round(1e6 * (cpu1[name] - cpu0[name]) / jobs, 1)
                                     for name in pids},
                  "script_calls_per_job": round(sum(
                      commands1.get(name, 0) - commands0.get(name, 0)
                      for name in ("fcall", "evalsha")) / jobs, 3) if commands1 else None,
                  "errors": recorder.errors[:5], "error_count": len(recorder.errors)}
    return result


async def s2_throughput(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    levels = []
    async with running_daemon(opt.settings, url=opt.url) as daemon:
        url = opt.url or daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, capacity=p["capacity"],
                              on_assign=recorder.on_assign):
            for concurrency in p["concurrency"]:
                connections = min(concurrency, 8)
                async with open_clients(url, recorder, connections) as clients:
                    start = time.perf_counter()
                    stop_at = start + p["seconds"]

                    async def worker(client: BenchClient, stop_at: float = stop_at) -> None:
                        while time.perf_counter() < stop_at:
                            record = await client.submit(recorder.new_id("S2"), waiter=True)
                            assert record.event is not None
                            await record.event.wait()

                    async with trio.open_nursery() as nursery:
                        for i in range(concurrency):
                            nursery.start_soon(worker, clients[i % connections])
                    elapsed = time.perf_counter() - start
                    records = recorder.window(start, stop_at)
                    summary = recorder.summary(records)
                    level = {"concurrency": concurrency, "connections": connections,
                             "jobs_per_s": round(summary["done"] / elapsed, 1), **summary}
                    levels.append(level)
                    p99 = summary["submit_to_done_ms"].get("p99", math.inf)
                    opt.say(f"  S2: concurrency {concurrency}: {level['jobs_per_s']} jobs/s, "
                            f"p99 {p99} ms")
                    if p99 > 50:
                        break
        good = [lv for lv in levels if lv["submit_to_done_ms"].get("p99", math.inf) <= 50]
        best = max(good or levels, key=lambda lv: lv["jobs_per_s"])
        total = recorder.summary(list(recorder.jobs.values()))
    return {"best_jobs_per_s": best["jobs_per_s"], "best_concurrency": best["concurrency"],
            "best_p99_ms": best["submit_to_done_ms"].get("p99"), "levels": levels,
            "submitted": total["submitted"], "done": total["done"], "lost": total["lost"],
            "errors": recorder.errors[:5], "error_count": len(recorder.errors)}


async def s3_heartbeats(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    from schedd.store.scripts import Scripts

    if opt.url is not None:
        raise ValueError("S3 measures the daemon's process: it needs its own daemon (no --url)")
    script = Scripts()["heartbeat_batch"]
    async with running_daemon(opt.settings) as daemon:
        # the store client (and the redis package under it) is imported here, not inside the
        # heartbeat window, where script_holds is the first to use it (~4 % of this process's
        # samples in that window went to the import)
        await daemon.redis_command("PING")
        url = daemon.url(opt.transport)
        recorder = Recorder()
        started = time.perf_counter()
        async with open_fleet(url, p["nodes"], opt.say, on_assign=recorder.on_assign) as fleet:
            registered_s = time.perf_counter() - started
            settle = min(5.0, p["idle_seconds"] / 4)
            await trio.sleep(settle)
            cpu0, t0 = _proc_times(daemon.pid), time.perf_counter()
            own0 = _proc_times(os.getpid())
            beats0 = fleet.stats.heartbeats
            calls = await daemon.count_script_calls(
                (script.function, script.sha), p["monitor_seconds"])
            monitor_s = p["monitor_seconds"]
            rest = max(0.0, p["idle_seconds"] - settle - monitor_s)
            holds = await daemon.script_holds((script.function, script.sha), rest)
            cpu1, t1 = _proc_times(daemon.pid), time.perf_counter()
            own1 = _proc_times(os.getpid())
            beats = fleet.stats.heartbeats - beats0
            memory = _proc_memory(daemon.pid)
            opt.say(f"  S3: heartbeats only: daemon CPU {100 * (cpu1 - cpu0) / (t1 - t0):.1f} %, "
                    f"RSS {memory.get('VmRSS', 0) / 1024:.0f} MB")
            async with open_clients(url, recorder, p["clients"]) as clients:
                cpu2, t2 = _proc_times(daemon.pid), time.perf_counter()
                own2 = _proc_times(os.getpid())
                await open_loop(clients, recorder, p["rate"], p["load_seconds"], opt.say, "S3")
                cpu3, t3 = _proc_times(daemon.pid), time.perf_counter()
                own3 = _proc_times(os.getpid())
                await recorder.drain()
            memory_load = _proc_memory(daemon.pid)
            stats = fleet.stats.snapshot()
    summary = recorder.summary(list(recorder.jobs.values()))
    return {
        "nodes": p["nodes"], "registration_s": round(registered_s, 2),
        "heartbeats_per_s": round(beats / (t1 - t0), 1),
        "daemon_cpu_pct_heartbeats": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "daemon_rss_mb": round(memory.get("VmRSS", 0) / 1024, 1),
        "heartbeat_script_calls_per_s": round(calls / monitor_s, 2),
        # Redis runs nothing else while a call runs: what a dispatch may wait behind
        "heartbeat_call_ms": percentiles(holds),
        "redis_heartbeat_ms_per_s": round(1000 * sum(holds) / rest, 2) if rest else None,
        "daemon_cpu_pct_with_jobs": round(100 * (cpu3 - cpu2) / (t3 - t2), 1),
        # this process: the simulated fleet and the clients (the other side of the same cores)
        "bench_cpu_pct_heartbeats": round(100 * (own1 - own0) / (t1 - t0), 1),
        "bench_cpu_pct_with_jobs": round(100 * (own3 - own2) / (t3 - t2), 1),
        "daemon_rss_mb_with_jobs": round(memory_load.get("VmRSS", 0) / 1024, 1),
        "daemon_rss_peak_mb": round(memory_load.get("VmHWM", 0) / 1024, 1),
        "job_rate": p["rate"], **summary,
        "node_errors": stats["errors"], "reconnects": stats["reconnects"],
        "errors": recorder.errors[:5], "error_count": len(recorder.errors),
    }


async def s4_script_cost(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    from schedd.benchmarks.script_cost import run as script_cost

    rows = await script_cost(p["sizes"], p["calls"])
    return {"rows": rows,
            "usec_per_call": {str(r["nodes_in_pool"]): r["select_reserve_usec_per_call"]
                              for r in rows},
            "usec_per_call_through_core": {
                str(r["nodes_in_pool"]): r["select_reserve_usec_per_call_through_core"]
                for r in rows},
            "usec_per_call_back_to_back": {
                str(r["nodes_in_pool"]): r["select_reserve_usec_per_call_back_to_back"]
                for r in rows}}


def held_jobs_after_kills(recorder: Recorder, kills: Sequence[dict[str, Any]]
                          ) -> tuple[dict[str, Any], list[float]]:
    """What became of the jobs the killed nodes held, and each reassignment's delay (s).

    A held job is reassigned (a later attempt reached another node), finished before the kill
    (the killed node's own attempt finished it: its result had left when the kill came, the
    node's send written, its task not yet resumed), or not reassigned: the failure."""
    delays: list[float] = []
    unreassigned = finished_before = held_jobs = 0
    for kill in kills:
        for job_id, attempt in kill["held"].items():
            held_jobs += 1
            record = recorder.jobs.get(job_id)
            later = [t for t, a, node in (record.reassigned if record else ())
                     if a > attempt and node != kill["node"]]
            if later:
                delays.append(min(later) - kill["at"])
            elif record is not None and record.done_at and record.done_node == kill["node"] \
                    and record.attempts == attempt:
                finished_before += 1
            else:
                unreassigned += 1
    return {"nodes_killed": len(kills), "jobs_held": held_jobs, "not_reassigned": unreassigned,
            "finished_before_kill": finished_before,
            "kill_to_reassign_ms": percentiles(delays)}, delays


async def s5_failover(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    interval = p["heartbeat_interval"]
    kills: list[dict[str, Any]] = []
    async with running_daemon(opt.settings, heartbeat_interval=interval, url=opt.url) as daemon:
        url = opt.url or daemon.url(opt.transport)
        recorder = Recorder()
        async with open_fleet(url, p["nodes"], opt.say, duration=parse_duration(p["duration"]),
                              on_assign=recorder.on_assign) as fleet, \
                open_clients(url, recorder, p["clients"]) as clients:
            await trio.sleep(p["warmup"])  # as S1: past the fleet's last collector freeze

            async def killer() -> None:
                await trio.sleep(p["seconds"] / 3)
                for how in ("drop", "silent"):
                    # spread over the fleet, so over the beat phases (a node's phase follows its
                    # place in the fleet): the first nodes holding jobs would all beat together
                    holding = [n for n in fleet.nodes if n.running and not n.killed]
                    victims = holding[::max(1, len(holding) // p["kills"])][:p["kills"]]
                    for node in victims:
                        held = dict(node.running)
                        fleet.kill(node, how)
                        kills.append({"how": how, "node": node.node_id, "at": time.perf_counter(),
                                      "held": held})
                    opt.say(f"  S5: {how}: killed {len(victims)} nodes holding "
                            f"{sum(len(k['held']) for k in kills if k['how'] == how)} jobs")
                    await trio.sleep(p["seconds"] / 3)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                await open_loop(clients, recorder, p["rate"], p["seconds"], opt.say, "S5")
            await recorder.drain(DRAIN_TIMEOUT + 10 * interval)
    out: dict[str, Any] = {"nodes": p["nodes"], "rate": p["rate"], "seconds": p["seconds"],
                           "warmup_s": p["warmup"], "heartbeat_interval_s": interval,
                           **recorder.summary(list(recorder.jobs.values()))}
    for how in ("drop", "silent"):
        out[how], delays = held_jobs_after_kills(recorder, [k for k in kills if k["how"] == how])
        if delays:
            out[how]["kill_to_reassign_intervals_max"] = round(max(delays) / interval, 2)
    out["errors"] = recorder.errors[:5]
    out["error_count"] = len(recorder.errors)
    return out


async def chaos(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scale-out chaos run (schedd.benchmarks.chaos) on one real redis-server."""
    from schedd.benchmarks.chaos import ChaosSettings, redis_topology, run_chaos

    settings = ChaosSettings(nodes=p["nodes"], jobs=p["jobs"], instances=p["instances"],
                             settle=p["settle"])
    with redis_topology("single") as (url, topology):
        report = await run_chaos(url, settings, topology=topology, topology_name="single")
    for line in report.lines():
        opt.say(f"  CHAOS {line}")
    return {"accepted": report.accepted, "done_messages": report.done_messages,
            "lost": report.lost, "duplicate_done": report.jobs_with_duplicate_done,
            "stale_slots": report.stale_slots, "jobs_per_second": round(report.jobs_per_second),
            "ok": report.ok, "report": report.lines()}


async def soak(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The daemon's RSS per reconnection and per job (schedd.benchmarks.soak)."""
    from schedd.benchmarks.soak import run_soak

    return await run_soak(opt, p)


_RUNNERS: Final = {"S1": s1_dispatch, "S2": s2_throughput, "S3": s3_heartbeats,
                   "S4": s4_script_cost, "S5": s5_failover, "CHAOS": chaos, "SOAK": soak}


def _failure(exc: BaseException) -> str:
    """The first underlying error of ``exc`` (groups opened), and how many there were."""
    leaves: list[BaseException] = []
    stack = [exc]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            leaves.append(e)
    first = leaves[0] if leaves else exc
    more = f" (and {len(leaves) - 1} more errors)" if len(leaves) > 1 else ""
    return f"{type(first).__name__}: {first}{more}"


async def run_bench(scenarios: Sequence[str], opt: Options,
                    checkpoint: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the scenarios in order; returns the JSON document (machine, settings, results).

    A scenario that fails is recorded as ``{"failed": reason}`` and the next one runs;
    ``checkpoint`` receives the document after every scenario (the CLI writes the JSON file).
    """
    results: dict[str, Any] = {}
    host = machine()
    document: dict[str, Any] = {
        "machine": host, "scale": opt.scale, "transport": opt.transport,
        "settings": [f"{section}.{key}={value}" for section, key, value in opt.settings],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results}
    seconds = HOST_PROBE_SECONDS[opt.scale]
    opt.say(f"HOST: probing for stalls of the CPUs, {seconds:g} s")
    host["host_stalls"] = stalls = await probe_host(seconds)
    opt.say(f"HOST: {host_probe.describe(stalls)}")
    for name in scenarios:
        params = SCALES[opt.scale][name]
        opt.say(f"{name}: {json.dumps(params)}")
        started = time.perf_counter()
        during: dict[str, Any] = {}
        try:
            async with probing(during) if opt.probe_during else nullcontext():
                results[name] = await _RUNNERS[name](opt, params)
        except Exception as exc:
            results[name] = {"failed": _failure(exc)}
            opt.say(f"{name}: FAILED: {results[name]['failed']}")
        if during:
            results[name]["host_stalls_during"] = during
            opt.say(f"{name}: host: {host_probe.describe(during)}")
        results[name]["params"] = params
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        opt.say(f"{name}: finished in {results[name]['wall_s']} s")
        if checkpoint is not None:
            checkpoint(document)
    # again after the scenarios: a host still running slower at the end (without stopping)
    # shows as a longer slice here than before (docs/benchmarks.md, "What S3's tail is made of")
    opt.say(f"HOST: probing again after the scenarios, {seconds:g} s")
    host["host_stalls_after"] = after = await probe_host(seconds)
    opt.say(f"HOST: {host_probe.describe(after)}")
    if checkpoint is not None:
        checkpoint(document)
    return document


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def _lat(d: dict[str, Any]) -> str:
    if not d.get("n"):
        return "-"
    return f"p50 {d['p50']} / p99 {d['p99']} / max {d['max']} ms"


def _holds(s: dict[str, Any]) -> str:
    held = s.get("heartbeat_call_ms") or {}
    if not held.get("n"):
        return "-"
    return (f"{held['p50']} / {held['max']} ms, {s['redis_heartbeat_ms_per_s']} ms per s "
            f"({held['n']} calls)")


def table(document: dict[str, Any]) -> str:
    """One line per measured figure: scenario, what, value."""
    rows: list[tuple[str, str, str]] = []
    speed = document.get("machine", {}).get("python_loop_ms")
    if speed is not None:
        rows.append(("HOST", "reference Python loop (lower: faster)", f"{speed} ms"))
    for key, when in (("host_stalls", "before"), ("host_stalls_after", "after")):
        stalls = document.get("machine", {}).get(key)
        if stalls is not None:
            rows.append(("HOST", f"CPU stalls (host_probe, idle, {when} the scenarios)",
                         host_probe.describe(stalls)))
    if document.get("settings"):
        rows.append(("HOST", "daemon settings (--set)", ", ".join(document["settings"])))
    r = {name: res for name, res in document["results"].items() if "failed" not in res}
    rows += [(name, "FAILED", res["failed"]) for name, res in document["results"].items()
             if "failed" in res]
    if "S1" in r:
        s = r["S1"]
        rows += [("S1", "submit->node", _lat(s["submit_to_node_ms"])),
                 ("S1", "submit->done", _lat(s["submit_to_done_ms"])),
                 ("S1", "CPU per job (" + " / ".join(s["cpu_us_per_job"]) + "); script calls",
                  " / ".join(f"{v:g}" for v in s["cpu_us_per_job"].values()) + " us; "
                  f"{s['script_calls_per_job']}"),
                 ("S1", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}")]
    if "S2" in r:
        s = r["S2"]
        rows += [("S2", "best sustained jobs/s (p99<=50ms)",
                  f"{s['best_jobs_per_s']} at concurrency {s['best_concurrency']} "
                  f"(p99 {s['best_p99_ms']} ms)"),
                 ("S2", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}")]
    if "S3" in r:
        s = r["S3"]
        rows += [("S3", "nodes / heartbeats per s", f"{s['nodes']} / {s['heartbeats_per_s']}"),
                 ("S3", "daemon CPU % (heartbeats only)", str(s["daemon_cpu_pct_heartbeats"])),
                 ("S3", "daemon RSS MB", f"{s['daemon_rss_mb']} (peak {s['daemon_rss_peak_mb']})"),
                 ("S3", "heartbeat script calls/s", str(s["heartbeat_script_calls_per_s"])),
                 ("S3", "heartbeat call holds Redis (p50 / max)", _holds(s)),
                 ("S3", "node errors / reconnects (live nodes reaped)",
                  f"{s['node_errors']} / {s['reconnects']}"),
                 ("S3", f"with {s['job_rate']} jobs/s: CPU %", str(s["daemon_cpu_pct_with_jobs"])),
                 ("S3", "sim + clients CPU % (idle / jobs)",
                  f"{s['bench_cpu_pct_heartbeats']} / {s['bench_cpu_pct_with_jobs']}"),
                 ("S3", "submit->node", _lat(s["submit_to_node_ms"])),
                 ("S3", "submit->done", _lat(s["submit_to_done_ms"])),
                 ("S3", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}")]
    if "S4" in r:
        others = [(r["S4"].get("usec_per_call_through_core", {}), "through the core"),
                  (r["S4"].get("usec_per_call_back_to_back", {}), "back to back")]
        for size, usec in r["S4"]["usec_per_call"].items():
            notes = "; ".join(f"{values[size]} {what}" for values, what in others
                              if size in values)
            rows.append(("S4", f"select+reserve, {size} nodes",
                         f"{usec} us/call" + (f" ({notes})" if notes else "")))
    if "S5" in r:
        s = r["S5"]
        for how in ("drop", "silent"):
            k = s[how]
            rows.append(("S5", f"{how}: kill->reassign",
                         f"{_lat(k['kill_to_reassign_ms'])} ({k['jobs_held']} jobs on "
                         f"{k['nodes_killed']} nodes, {k['not_reassigned']} not reassigned"
                         + (f", {k['finished_before_kill']} finished before the kill"
                            if k.get("finished_before_kill") else "") + ")"))
        rows.append(("S5", "submit->node, kills included", _lat(s["submit_to_node_ms"])))
        rows.append(("S5", "jobs submitted/done/lost", f"{s['submitted']}/{s['done']}/{s['lost']}"))
    if "CHAOS" in r and "accepted" in r["CHAOS"]:
        c = r["CHAOS"]
        rows.append(("CHAOS", "accepted/done/lost/duplicate done",
                     f"{c['accepted']}/{c['done_messages']}/{c['lost']}/{c['duplicate_done']}"
                     f" ({c['jobs_per_second']} jobs/s, {'OK' if c['ok'] else 'FAILED'})"))
    if "SOAK" in r:
        from schedd.benchmarks.soak import table_rows

        rows += table_rows(r["SOAK"])
    rows += [(name, "CPU stalls during the run (--probe-during)",
              host_probe.describe(res["host_stalls_during"]))
             for name, res in document["results"].items() if "host_stalls_during" in res]
    width = [max(len(row[i]) for row in [("SCEN", "WHAT", "VALUE"), *rows]) for i in range(3)]
    lines = [("SCEN", "WHAT", "VALUE"), *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, width, strict=True)).rstrip()
                     for row in lines)


def default_json_path() -> Path:
    return Path("bench-results") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
