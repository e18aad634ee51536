"""``schedd bench --scenarios PEER``: the same no-op workload through schedd, BullMQ and Celery.

Rules of this module:

* Parameters: ``SCALES[scale]["PEER"]`` in :mod:`schedd.devtools.bench.scenarios` (``rounds``,
  ``serial`` and ``warmup`` jobs, ``burst`` jobs, worker ``capacity``, Celery's
  ``celery_concurrency``, the burst's ``timeout`` in seconds).
* One throw-away redis-server for every system (:class:`~schedd.devtools.redis_process.
  RedisServer`, db 0). Before each system's turn: ``FLUSHALL`` and ``CONFIG RESETSTAT``. The
  systems take turns, ``rounds`` times (schedd, bullmq, celery, schedd, ...), so that a drift
  of the host's speed falls on all of them alike.
* Each turn runs a **worker** process and a **producer** process, both of the system under
  test (the contract: :mod:`schedd.devtools.peer_drivers`); schedd's turn also starts a daemon
  on the shared Redis (:func:`~schedd.devtools.bench.daemon.running_daemon`), its client and
  node using the SDK over ``--transport``. The worker says ``ready``; the producer runs the
  serial jobs and reports their round trips; then the bench takes a snapshot
  (:mod:`schedd.devtools.peer_measure`), tells the producer to run the burst, and takes a
  second snapshot when the producer reports it. CPU, Redis commands and Redis CPU per job are
  the difference of the two snapshots over the burst's jobs (the bench's own ``INFO`` calls
  left out).
* BullMQ (:data:`BULLMQ_MAJOR`) is installed with npm into :func:`cache_dir`, outside the
  repository, when ``node`` and ``npm`` exist; Celery is the ``peer`` extra. A system that
  cannot be installed or imported is skipped with its reason; one that fails during a turn
  is recorded as failed and left out of later rounds. A failure of schedd's turn fails the
  scenario.
* The ratios divide schedd's figure by each peer's: above 1 means schedd's is larger (slower
  round trip, more jobs/s, more CPU or Redis work per job).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from schedd.devtools import peer_measure
from schedd.devtools.bench.daemon import running_daemon
from schedd.devtools.bench.measure import percentiles
from schedd.devtools.bench.options import Options
from schedd.devtools.redis_process import RedisServer

__all__ = ["BULLMQ_MAJOR", "SYSTEMS", "cache_dir", "prepare_bullmq", "ratios", "run_peer",
           "table_rows"]

SYSTEMS: Final = ("schedd", "bullmq", "celery")
BULLMQ_MAJOR: Final = 6
#: what npm installs, at these major versions: BullMQ 6 leaves its Redis client to the user
NPM_PACKAGES: Final = {"bullmq": BULLMQ_MAJOR, "ioredis": 5}
QUEUE: Final = "peer"
_SCRIPT: Final = Path(__file__).with_name("peers") / "bullmq_peer.mjs"
_READY_TIMEOUT: Final = 60.0
_INSTALL_TIMEOUT: Final = 120.0
#: commands the bench itself sends between the two snapshots
_OWN_COMMANDS: Final = ("info",)
#: the roles whose CPU is reported, in order
ROLES: Final = ("daemon", "client", "worker", "redis")


def cache_dir() -> Path:
    """Where BullMQ is installed: ``$XDG_CACHE_HOME/schedd/peers`` (``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "schedd" / "peers"


def _installed_version(cache: Path, package: str) -> str | None:
    try:
        meta = json.loads((cache / "node_modules" / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return version if isinstance(version, str) else None


def _installed(cache: Path) -> str | None:
    """``bullmq X (ioredis Y)`` when both are installed in ``cache`` at the pinned majors."""
    versions = {package: _installed_version(cache, package) for package in NPM_PACKAGES}
    if any(version is None or version.split(".")[0] != str(NPM_PACKAGES[package])
           for package, version in versions.items()):
        return None
    return f"{versions['bullmq']} (ioredis {versions['ioredis']})"


async def prepare_bullmq(cache: Path | None = None) -> tuple[Path | None, str]:
    """``(script, version)`` with BullMQ installed in ``cache`` (npm, once), or ``(None,
    reason)`` when it cannot be."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None, "node and npm not found on PATH"
    cache = cache or cache_dir()
    version = _installed(cache)
    packages = [f"{package}@{major}" for package, major in NPM_PACKAGES.items()]
    if version is None:
        cache.mkdir(parents=True, exist_ok=True)
        command = [npm, "install", "--prefix", str(cache), "--no-audit", "--no-fund", *packages]
        try:
            with trio.fail_after(_INSTALL_TIMEOUT):
                proc = await trio.run_process(command, capture_stdout=True, capture_stderr=True,
                                              check=False)
        except (OSError, trio.TooSlowError) as exc:
            return None, f"npm install {' '.join(packages)} failed: {exc or 'timed out'}"
        version = _installed(cache)
        if proc.returncode != 0 or version is None:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            return None, (f"npm install {' '.join(packages)} failed (exit {proc.returncode}): "
                          f"{lines[-1] if lines else 'no output'}")
    script = cache / _SCRIPT.name
    shutil.copyfile(_SCRIPT, script)  # beside node_modules, where its import finds bullmq
    return script, version


def _celery_version() -> str | None:
    if importlib.util.find_spec("celery") is None:
        return None
    return importlib.metadata.version("celery")


@attrs.frozen
class Side:
    """One system's turn: its two commands, their environment, and the other processes whose
    CPU counts (schedd's daemon)."""

    worker: list[str]
    producer: list[str]
    env: dict[str, str] = attrs.field(factory=dict)
    pids: dict[str, int] = attrs.field(factory=dict)


class Driver:
    """A worker or producer process: lines on its stdout, lines to its stdin, stderr kept in a
    file for the error message."""

    def __init__(self, proc: trio.Process, log: Path, name: str) -> None:
        self.proc, self.log, self.name = proc, log, name
        self._buffer = b""

    @classmethod
    async def start(cls, command: Sequence[str], env: dict[str, str], log: Path,
                    name: str) -> Driver:
        with open(log, "wb") as err:  # noqa: ASYNC230 (a start-up step, before measuring)
            # a process group of its own: stopping it stops what it started (Celery's pool)
            proc = await trio.lowlevel.open_process(
                list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                env={**os.environ, **env}, start_new_session=True)
        return cls(proc, log, name)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _tail(self) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return text[-1500:]

    async def line(self, limit: float) -> str:
        """The next line of stdout; raises RuntimeError when the process ends or is silent
        for ``limit`` seconds."""
        assert self.proc.stdout is not None
        with trio.move_on_after(limit):
            while b"\n" not in self._buffer:
                chunk = await self.proc.stdout.receive_some()
                if not chunk:
                    await self.proc.wait()
                    raise RuntimeError(f"{self.name} exited {self.proc.returncode}: "
                                       f"{self._tail()}")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            return line.decode()
        raise RuntimeError(f"{self.name} said nothing for {limit:g} s: {self._tail()}")

    async def ready(self, limit: float) -> None:
        """Wait for the line ``ready`` (or ``"ready"``), skipping others (Celery's banner),
        ``limit`` seconds at most."""
        with trio.move_on_after(limit):
            while (await self.line(limit)).strip().strip('"') != "ready":
                pass
            return
        raise RuntimeError(f"{self.name} was not ready within {limit:g} s: {self._tail()}")

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(text.encode())

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group has ended
            os.killpg(self.proc.pid, signum)  # the group this driver leads (start_new_session)

    async def stop(self) -> None:
        """SIGTERM to the driver's process group, SIGKILL after 5 s."""
        with trio.CancelScope(shield=True):
            self._signal_group(signal.SIGTERM)
            with trio.move_on_after(5):
                await self.proc.wait()
            self._signal_group(signal.SIGKILL)
            await self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    await stream.aclose()


async def _snapshot(store: Any, pids: dict[str, int]) -> peer_measure.Snapshot:
    stats = await store.execute("INFO", "commandstats")
    cpu = await store.execute("INFO", "cpu")
    return peer_measure.take(stats, cpu, pids)


def _producer_args(p: dict[str, Any]) -> list[str]:
    return [str(p["serial"]), str(p["warmup"]), str(p["burst"]), str(p["timeout"])]


@asynccontextmanager
async def _side(system: str, opt: Options, redis: RedisServer, p: dict[str, Any],
                script: Path | None) -> AsyncIterator[Side]:
    if system == "schedd":
        async with running_daemon(opt.settings, redis=redis) as daemon:
            url = daemon.url(opt.transport)
            py = [sys.executable, "-m", "schedd.devtools.peer_drivers"]
            yield Side([*py, "node", url, str(p["capacity"])],
                       [*py, "client", url, *_producer_args(p)], pids={"daemon": daemon.pid})
    elif system == "bullmq":
        assert script is not None
        node = [shutil.which("node") or "node", str(script)]
        yield Side([*node, "worker", redis.url, QUEUE, str(p["capacity"])],
                   [*node, "producer", redis.url, QUEUE, *_producer_args(p)])
    else:
        yield Side([sys.executable, "-m", "celery", "-A", "schedd.devtools.peer_celery",
                    "worker", "--pool", "prefork", "--concurrency",
                    str(p["celery_concurrency"]), "--loglevel", "WARNING", "--without-gossip",
                    "--without-mingle", "--without-heartbeat", "-Q", QUEUE],
                   [sys.executable, "-m", "schedd.devtools.peer_celery", "producer",
                    *_producer_args(p)], env={"PEER_REDIS_URL": redis.url})


async def _turn(system: str, opt: Options, redis: RedisServer, store: Any, p: dict[str, Any],
                script: Path | None, logs: Path) -> dict[str, Any]:
    """One system's turn: its serial round trips and its burst, measured."""
    await store.execute("FLUSHALL")
    await store.execute("CONFIG", "RESETSTAT")
    assert redis.proc is not None
    async with _side(system, opt, redis, p, script) as side:
        worker = await Driver.start(side.worker, side.env, logs / f"{system}-worker.log",
                                    f"{system} worker")
        try:
            await worker.ready(_READY_TIMEOUT)
            producer = await Driver.start(side.producer, side.env,
                                          logs / f"{system}-producer.log", f"{system} producer")
            try:
                serial = json.loads(await producer.line(
                    _READY_TIMEOUT + p["warmup"] + p["serial"]))["serial_s"]
                pids = {**side.pids, "client": producer.pid, "worker": worker.pid,
                        "redis": redis.proc.pid}
                before = await _snapshot(store, pids)
                await producer.send("burst\n")
                burst: dict[str, Any] = json.loads(await producer.line(p["timeout"] + 30))
                after = await _snapshot(store, pids)
            finally:
                await producer.stop()
        finally:
            await worker.stop()
    commands = {name: stat for name, stat in
                peer_measure.commandstats_diff(before.commands, after.commands).items()
                if name not in _OWN_COMMANDS}
    burst.update(jobs=burst["submitted"], cpu_s=peer_measure.cpu_diff(before, after),
                 commands=commands,
                 jobs_per_s=round(burst["received"] / burst["seconds"], 1)
                 if burst["seconds"] else None)
    return {"serial_s": serial, "burst": burst}


def _summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """A system's figures over its turns: serial samples pooled, bursts side by side."""
    bursts = [turn["burst"] for turn in turns]
    rates = [b["jobs_per_s"] for b in bursts if b["jobs_per_s"] is not None]
    return {
        "serial_ms": percentiles([s for turn in turns for s in turn["serial_s"]]),
        "jobs_per_s": round(statistics.median(rates), 1) if rates else None,
        "jobs_per_s_by_round": rates,
        "lost": sum(b["lost"] for b in bursts),
        "duplicated": sum(b["duplicated"] for b in bursts),
        "failed_jobs": sum(b["failed"] for b in bursts),
        "per_job": peer_measure.per_job(bursts),
        "bursts": bursts,
    }


def _figures(s: dict[str, Any]) -> dict[str, float | None]:
    per = s.get("per_job", {})
    cpu = per.get("cpu_us", {})
    return {"serial_p50": s["serial_ms"].get("p50"), "serial_p99": s["serial_ms"].get("p99"),
            "jobs_per_s": s.get("jobs_per_s"), "cpu_us_total": cpu.get("total"),
            "cpu_us_client": cpu.get("client"), "cpu_us_worker": cpu.get("worker"),
            "cpu_us_redis": cpu.get("redis"), "redis_calls": per.get("redis_calls"),
            "script_calls": per.get("script_calls"),
            "redis_usec": per.get("redis_usec"), "redis_cpu_us": per.get("redis_cpu_us")}


def ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """schedd's figures over each peer's that ran (``"schedd/bullmq"``: ...)."""
    mine = systems.get("schedd", {})
    if "serial_ms" not in mine:
        return {}
    out = {}
    for peer, theirs in systems.items():
        if peer == "schedd" or "serial_ms" not in theirs:
            continue
        a, b = _figures(mine), _figures(theirs)
        out[f"schedd/{peer}"] = {key: peer_measure.ratio(a[key], b[key]) for key in a}
    return out


async def run_peer(opt: Options, p: dict[str, Any]) -> dict[str, Any]:
    """The scenario: every available system ``rounds`` times in turn on one redis-server."""
    from schedd.store import open_store

    if opt.url is not None:
        raise ValueError("PEER starts its own daemon on the shared redis-server (no --url)")
    systems: dict[str, dict[str, Any]] = {
        "schedd": {"version": importlib.metadata.version("schedd"),
                   "setup": f"SDK Client and Node (capacity {p['capacity']}) on trio, "
                            f"{opt.transport}; submit_many, handle.result()"}}
    script, bullmq = await prepare_bullmq()
    systems["bullmq"] = ({"version": bullmq, "setup": f"Worker concurrency {p['capacity']}, "
                          "addBulk, QueueEvents, removeOnComplete/removeOnFail true"}
                         if script is not None else {"skipped": bullmq})
    celery = _celery_version()
    systems["celery"] = ({"version": celery, "setup": f"prefork worker, concurrency "
                          f"{p['celery_concurrency']}; group().apply_async(), .get()"}
                         if celery is not None
                         else {"skipped": "celery is not installed (pip install 'schedd[peer]')"})
    for name, system in systems.items():
        opt.say(f"  PEER: {name}: {system.get('version') or 'skipped: ' + system['skipped']}")
    turns: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    logs = Path(tempfile.mkdtemp(prefix="schedd-peer-"))
    with RedisServer() as redis:
        async with open_store(redis.url) as store:
            for round_ in range(p["rounds"]):
                for name in SYSTEMS:
                    if "skipped" in systems[name] or "failed" in systems[name]:
                        continue
                    try:
                        turn = await _turn(name, opt, redis, store, p, script, logs)
                    except Exception as exc:
                        if name == "schedd":
                            raise
                        systems[name]["failed"] = f"{type(exc).__name__}: {exc}"
                        opt.say(f"  PEER: {name} FAILED: {systems[name]['failed']}")
                        continue
                    turns[name].append(turn)
                    b = turn["burst"]
                    opt.say(f"  PEER: round {round_ + 1}, {name}: serial p50 "
                            f"{percentiles(turn['serial_s']).get('p50')} ms; burst "
                            f"{b['jobs_per_s']} jobs/s, lost {b['lost']}, "
                            f"duplicated {b['duplicated']}")
    if not os.environ.get("SCHEDD_BENCH_KEEP"):
        shutil.rmtree(logs, ignore_errors=True)
    for name, mine in turns.items():
        if mine:
            systems[name].update(_summary(mine))
    return {"transport": opt.transport, "rounds": p["rounds"], "burst": p["burst"],
            "systems": systems,
            "ratios": ratios(systems)}


_NAMES: Final = {"schedd": "schedd", "bullmq": "BullMQ", "celery": "Celery"}


def _cpu(per: dict[str, Any]) -> str:
    cpu = per.get("cpu_us", {})
    roles = [role for role in ROLES if role in cpu]
    return (" / ".join(f"{role} {cpu[role]:g}" for role in roles)
            + f" = {cpu.get('total', 0):g} us")


def _one_line(text: str, limit: int = 300) -> str:
    """A multi-line reason (a driver's stderr) as one line of the table; the JSON has it all."""
    one = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return one if len(one) <= limit else one[:limit] + "..."


def table_rows(s: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The scenario's lines of ``schedd bench``'s table."""
    rows: list[tuple[str, str, str]] = []
    for name, sys_ in s["systems"].items():
        who = f"{_NAMES.get(name, name)} {sys_.get('version', '')}".strip()
        if "skipped" in sys_:
            rows.append(("PEER", _NAMES.get(name, name), f"skipped: {sys_['skipped']}"))
            continue
        if "failed" in sys_:
            rows.append(("PEER", who, f"FAILED: {_one_line(sys_['failed'])}"))
        if "serial_ms" not in sys_:
            continue
        lat, per = sys_["serial_ms"], sys_["per_job"]
        rows += [
            ("PEER", f"{who}: serial submit->result",
             f"p50 {lat['p50']} / p99 {lat['p99']} / max {lat['max']} ms" if lat.get("n")
             else "-"),
            ("PEER", f"{who}: burst of {s['burst']} jobs",
             f"{sys_['jobs_per_s']} jobs/s (rounds: "
             f"{', '.join(f'{r:g}' for r in sys_['jobs_per_s_by_round'])}); lost "
             f"{sys_['lost']}, duplicated {sys_['duplicated']}, failed {sys_['failed_jobs']}"),
            ("PEER", f"{who}: CPU per job (burst)", _cpu(per)),
            ("PEER", f"{who}: Redis per job: commands (script calls) / usec (in scripts) / "
                     "CPU us",
             f"{per.get('redis_calls')} ({per.get('script_calls')}) / {per.get('redis_usec')} "
             f"({per.get('script_usec')}) / {per.get('redis_cpu_us')}"),
            ("PEER", f"{who}: Redis top commands (calls per job)",
             ", ".join(f"{cmd} {stat['calls']:g}"
                       for cmd, stat in per.get("top_commands", {}).items()) or "-"),
        ]
    for pair, r in s["ratios"].items():
        rows.append(("PEER", f"{pair}: serial p50 / p99; jobs/s; CPU/job; Redis calls / usec "
                             "/ CPU per job",
                     f"{r['serial_p50']} / {r['serial_p99']}; {r['jobs_per_s']}; "
                     f"{r['cpu_us_total']}; {r['redis_calls']} / {r['redis_usec']} / "
                     f"{r['redis_cpu_us']}"))
    return rows
