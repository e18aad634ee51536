"""Chaos run: several ``schedd run`` instances on one Redis deployment, nodes and clients spread
over them, and things killed on purpose while jobs flow.

::

    python -m schedd.devtools.chaos --nodes 200 --jobs 5000              # one redis-server
    python -m schedd.devtools.chaos --topology sentinel --kill-redis     # + a Redis failover
    python -m schedd.devtools.chaos --topology cluster --kill-redis

Rules of this module:

* Everything is real: ``schedd run`` processes (TCP transport, readiness via ``NOTIFY_SOCKET``),
  :class:`schedd.sdk.Node` and :class:`schedd.sdk.Client` with every instance's URL (each starts
  on its own instance and fails over to the next), and real ``redis-server`` processes
  (:mod:`schedd.devtools.redis_topologies`).
* Chaos, by progress of the accepted jobs: ``kill -9`` of one instance, random nodes killed, one
  killed node restarted on another instance, and (``--kill-redis``) ``kill -9`` of the Redis
  master that holds the namespace.
* The verdict is checked at the end, against the clients and against Redis itself: every
  accepted job is in exactly one terminal state, every client got exactly one ``done`` per job
  it submitted, and no node still holds a slot (``node:<id>:jobs``, ``used``) for a finished job.
  A job whose ``done`` never came within ``--settle`` seconds counts as lost.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from schedd.devtools.redis_process import RedisServer, free_port
from schedd.devtools.redis_topologies import RedisCluster, RedisSentinels, kill
from schedd.protocol import Done
from schedd.sdk import Client, ConnectFailed, JobContext, Node, RequestFailed
from schedd.store import open_store
from schedd.store.base import Store
from schedd.store.cluster import namespace_slot
from schedd.store.keys import Keys

__all__ = ["ChaosReport", "ChaosSettings", "DaemonProcess", "redis_topology", "run_chaos"]

log = logging.getLogger(__name__)

SCHEDD = str(Path(sys.executable).parent / "schedd")
TERMINAL = frozenset({"done", "failed", "canceled", "timed_out"})
POOL = "chaos"


@attrs.define
class ChaosSettings:
    nodes: int = 30
    jobs: int = 500
    instances: int = 3
    capacity: int = 2
    job_seconds: tuple[float, float] = (0.005, 0.05)
    in_flight: int = 64  # concurrent submits per client
    rate: float = 0.0  # submits per second over all clients; 0: as fast as they go
    kill_instance: bool = True
    kill_nodes: float = 0.1  # fraction of the nodes killed
    restart_node: bool = True
    kill_redis: bool = False
    settle: float = 60.0  # seconds to wait for the last done after the last submit
    namespace: str = "chaos"
    heartbeat_interval: float = 0.5


@attrs.define
class ChaosReport:
    topology: str
    settings: ChaosSettings
    accepted: int = 0
    submit_retries: int = 0
    done_messages: int = 0
    jobs_without_done: int = 0
    jobs_with_duplicate_done: int = 0
    states: dict[str, int] = attrs.Factory(dict)
    not_terminal: int = 0
    missing_in_redis: int = 0
    stale_slots: int = 0
    nodes_with_used: int = 0
    elapsed: float = 0.0
    submit_seconds: float = 0.0
    redis_recovery: float | None = None
    events: list[str] = attrs.Factory(list)
    accepted_ids: list[str] = attrs.Factory(list)
    killed_instance: str | None = None
    dead_inbox_removed: bool | None = None  # the reaper removed the killed instance's inbox

    @property
    def lost(self) -> int:
        return self.jobs_without_done + self.missing_in_redis + self.not_terminal

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.jobs_with_duplicate_done == 0
            and self.stale_slots == 0
            and self.nodes_with_used == 0
            and self.dead_inbox_removed is not False
        )

    @property
    def jobs_per_second(self) -> float:
        return self.accepted / self.elapsed if self.elapsed else 0.0

    def lines(self) -> list[str]:
        s = self.settings
        return [
            f"topology {self.topology}: {s.instances} instances, {s.nodes} nodes x {s.capacity} "
            f"slots, {s.jobs} jobs; cores: {os.cpu_count()}",
            *[f"  event {e}" for e in self.events],
            f"  accepted {self.accepted} (submit retries {self.submit_retries})",
            f"  done messages {self.done_messages}: jobs without done {self.jobs_without_done}, "
            f"with more than one {self.jobs_with_duplicate_done}",
            f"  terminal states in redis {dict(sorted(self.states.items()))}; not terminal "
            f"{self.not_terminal}; missing {self.missing_in_redis}",
            f"  slots held for finished jobs {self.stale_slots}; nodes with used > 0 at the end "
            f"{self.nodes_with_used}",
            f"  first submit to last done {self.elapsed:.1f} s (submits took "
            f"{self.submit_seconds:.1f} s): {self.jobs_per_second:.0f} jobs/s"
            + (f"; redis recovered {self.redis_recovery:.1f} s after the kill"
               if self.redis_recovery is not None else ""),
            f"  inbox and presence of the killed instance removed by the reaper: "
            f"{self.dead_inbox_removed}",
            f"  lost {self.lost} -> {'OK' if self.ok else 'FAILED'}",
        ]


class DaemonProcess:
    """One ``schedd run`` from a temporary ``sched.toml`` (TCP only), ready via NOTIFY_SOCKET."""

    def __init__(self, folder: Path, store_url: str, settings: ChaosSettings, index: int) -> None:
        self.dir = folder / f"instance-{index}"
        self.dir.mkdir(parents=True)
        self.name = f"chaos-{index}"
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.config = self.dir / "sched.toml"
        self.config.write_text(
            f'[schedd]\ninstance = "{self.name}"\nnamespace = "{settings.namespace}"\n'
            f'log_level = "warning"\n'
            f'[redis]\nurl = "{store_url}"\ncommand_timeout = 2.0\nconnect_timeout = 2.0\n'
            f"[nodes]\nheartbeat_interval = {settings.heartbeat_interval}\n"
            "disconnect_grace = 0.2\n"
            "[jobs]\nack_timeout = 3.0\nrun_timeout = 30.0\nqueue_timeout = 300.0\n"
            "max_attempts = 10\n"
            '[plugins]\nenabled = ["transport_tcp"]\n'
            f'[plugins.transport_tcp]\nlisten = "127.0.0.1:{self.port}"\n'
        )
        self.notify_path = str(self.dir / "notify.sock")
        self.log = self.dir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(self.notify_path)
        self._spawn()
        assert self.proc is not None
        try:
            with trio.fail_after(30):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()}")
                    with trio.move_on_after(0.2):
                        note = (await sock.recv(4096)).decode()
                        if "READY=1" in note.split("\n"):
                            return
        finally:
            sock.close()

    def _spawn(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": self.notify_path}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [SCHEDD, "run", "-c", str(self.config)], env=env, stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class _CountingClient(Client):
    """A client that counts every ``done`` it receives on the wire, duplicates included."""

    dones: Counter[str]

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Done):
            self.dones[message.job_id] += 1
        await super()._on_message(message)


def _rotated(urls: Sequence[str], first: int) -> list[str]:
    first %= len(urls)
    return [*urls[first:], *urls[:first]]


@contextlib.contextmanager
def redis_topology(name: str) -> Iterator[tuple[str, Any]]:
    """Start ``single`` / ``aof`` / ``sentinel`` / ``cluster``; yield (store URL, handle)."""
    if name in ("single", "aof"):
        extra = ["--appendonly", "yes", "--appendfsync", "everysec"] if name == "aof" else []
        with RedisServer(extra_args=extra) as server:
            yield server.url, server
    elif name == "sentinel":
        with RedisSentinels() as sentinels:
            yield sentinels.url, sentinels
    elif name == "cluster":
        with RedisCluster() as cluster:
            yield cluster.url, cluster
    else:
        raise ValueError(f"unknown topology {name!r}: single, aof, sentinel or cluster")


def _kill_redis_master(topology: Any, namespace: str) -> str:
    if isinstance(topology, RedisCluster):
        victim = topology.master_of(namespace_slot(namespace))
        kill(victim)
        return f"kill -9 of cluster master 127.0.0.1:{victim.port} (slot of {namespace!r})"
    if isinstance(topology, RedisSentinels):
        victim = topology.current_master()
        kill(victim)
        return f"kill -9 of sentinel master 127.0.0.1:{victim.port}"
    raise ValueError("--kill-redis needs the sentinel or cluster topology")


async def _wait_redis(url: str, namespace: str, since: float) -> float:
    """Seconds from ``since`` until a write succeeds on a fresh store (the new master)."""
    keys = Keys(namespace)
    with trio.fail_after(60):
        while True:
            try:
                async with open_store(url, namespace=namespace, connect_timeout=1.0,
                                      command_timeout=1.0) as store:
                    await store.execute("HINCRBY", keys.counts, "chaos:probe", 1)
                    return time.monotonic() - since
            except Exception:  # every failure means "not yet": keep probing
                await trio.sleep(0.05)


async def run_chaos(
    store_url: str,
    settings: ChaosSettings,
    *,
    topology: Any = None,
    topology_name: str = "single",
    workdir: Path | None = None,
) -> ChaosReport:
    """Run one chaos scenario against ``store_url`` and return the verdict."""
    report = ChaosReport(topology_name, settings)
    folder = workdir or Path(tempfile.mkdtemp(prefix="schedd-chaos-"))
    daemons = [DaemonProcess(folder, store_url, settings, i) for i in range(settings.instances)]
    try:
        async with trio.open_nursery() as starting:
            for daemon in daemons:
                starting.start_soon(daemon.start)
        urls = [d.url for d in daemons]
        await _drive(report, settings, urls, daemons, store_url, topology)
        async with open_store(store_url, namespace=settings.namespace) as store:
            await _verify(report, store, Keys(settings.namespace))
    finally:
        # (the surviving instances run until here: their reaper removes the dead inbox)
        for daemon in daemons:
            daemon.stop()
    return report


async def _drive(
    report: ChaosReport,
    settings: ChaosSettings,
    urls: list[str],
    daemons: list[DaemonProcess],
    store_url: str,
    topology: Any,
) -> None:
    low, high = settings.job_seconds

    async def work(ctx: JobContext) -> Any:
        await trio.sleep(random.uniform(low, high))
        return {"job": ctx.job_id}

    node_scopes: dict[str, trio.CancelScope] = {}
    accepted: list[Any] = []
    clients: list[_CountingClient] = []
    dones: Counter[str] = Counter()

    async def run_node(node_id: str, first: int, *, task_status: trio.TaskStatus[None]) -> None:
        node = Node(_rotated(urls, first), work, pools=[POOL], capacity=settings.capacity,
                    node_id=node_id, reconnect_delay=0.1)
        with trio.CancelScope() as scope:
            node_scopes[node_id] = scope
            await node.run(task_status=task_status)

    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starting:
            for i in range(settings.nodes):
                starting.start_soon(nursery.start, run_node, f"cn-{i:04d}", i)
        log.info("%d nodes registered", settings.nodes)

        async with contextlib.AsyncExitStack() as stack:
            for i in range(settings.instances):
                client = await stack.enter_async_context(
                    _CountingClient.connect(_rotated(urls, i), connect_timeout=2.0)
                )
                assert isinstance(client, _CountingClient)
                client.dones = dones
                clients.append(client)
            chaos_done = trio.Event()
            plan: list[tuple[float, str]] = []
            if settings.kill_instance and len(daemons) > 1:
                plan.append((0.25, "instance"))
            if settings.kill_nodes > 0:
                plan.append((0.4, "nodes"))
            if settings.kill_redis:
                plan.append((0.5, "redis"))
            # accepted-job counts at which the chaos task acts
            marks = {max(1, int(at * settings.jobs)): trio.Event() for at, _ in plan}

            async def submit(index: int, limiter: trio.CapacityLimiter) -> None:
                job_id = f"cj-{index:06d}"
                client = clients[index % len(clients)]
                if settings.rate > 0:
                    # paced, so that the chaos happens while submits are still coming in
                    await trio.sleep_until(paced_from + index / settings.rate)
                async with limiter:
                    with trio.fail_after(120):
                        while True:
                            try:
                                handle = await client.submit({"n": index}, pools=[POOL],
                                                             job_id=job_id)
                                break
                            except (RequestFailed, ConnectFailed) as exc:
                                report.submit_retries += 1
                                log.debug("submit %s: %s; retrying", job_id, exc)
                                await trio.sleep(0.1)
                accepted.append(handle)
                mark = marks.get(len(accepted))
                if mark is not None:
                    mark.set()

            async def chaos() -> None:
                killed_nodes: list[str] = []
                for at, what in plan:
                    await marks[max(1, int(at * settings.jobs))].wait()
                    if what == "instance":
                        daemons[0].kill()
                        report.killed_instance = daemons[0].name
                        report.events.append(
                            f"kill -9 of instance {daemons[0].name} at {len(accepted)} accepted"
                        )
                    elif what == "nodes":
                        count = max(1, int(settings.nodes * settings.kill_nodes))
                        killed_nodes = random.sample(sorted(node_scopes), count)
                        for node_id in killed_nodes:
                            node_scopes.pop(node_id).cancel()
                        report.events.append(f"killed {count} nodes at {len(accepted)} accepted")
                        if settings.restart_node:
                            await trio.sleep(0.5)
                            node_id = killed_nodes[0]
                            first = (int(node_id.rpartition("-")[2]) + 1) % len(urls)
                            if first == 0 and settings.kill_instance:
                                first = 1 % len(urls)
                            await nursery.start(run_node, node_id, first)
                            report.events.append(
                                f"restarted node {node_id} on instance {daemons[first].name}"
                            )
                    elif what == "redis":
                        killed_at = time.monotonic()
                        report.events.append(
                            _kill_redis_master(topology, settings.namespace)
                            + f" at {len(accepted)} accepted"
                        )
                        report.redis_recovery = await _wait_redis(
                            store_url, settings.namespace, killed_at
                        )
                chaos_done.set()

            submit_started = time.monotonic()
            paced_from = trio.current_time()
            async with trio.open_nursery() as jobs:
                jobs.start_soon(chaos)
                limiter = trio.CapacityLimiter(settings.in_flight * len(clients))
                for index in range(settings.jobs):
                    jobs.start_soon(submit, index, limiter)
            report.submit_seconds = time.monotonic() - submit_started
            await chaos_done.wait()
            report.accepted = len(accepted)

            with trio.move_on_after(settings.settle):
                for handle in accepted:
                    with contextlib.suppress(RequestFailed):
                        await handle.result()
            report.elapsed = time.monotonic() - submit_started
            # a duplicate done would arrive right after the first: give it a moment to show
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()

    report.done_messages = sum(dones.values())
    report.jobs_without_done = sum(1 for h in accepted if dones[h.job_id] == 0)
    report.jobs_with_duplicate_done = sum(1 for h in accepted if dones[h.job_id] > 1)
    report.accepted_ids = [h.job_id for h in accepted]


async def _verify(report: ChaosReport, store: Store, keys: Keys) -> None:
    ids = report.accepted_ids
    states: Counter[str] = Counter()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        replies = await store.execute_many([("HGET", keys.job(j), "state") for j in chunk])
        for reply in replies:
            if reply is None:
                report.missing_in_redis += 1
                continue
            state = reply.decode()
            states[state] += 1
            if state not in TERMINAL:
                report.not_terminal += 1
    report.states = dict(states)
    if report.killed_instance is not None:
        # instance presence expires after CoreSettings.instance_ttl (10 s); then the reaper of a
        # surviving instance deletes the dead one's inbox
        with trio.move_on_after(20):
            while True:
                exists = await store.execute("EXISTS", keys.inbox(report.killed_instance))
                present = await store.execute("ZSCORE", keys.instances, report.killed_instance)
                if not exists and present is None:
                    report.dead_inbox_removed = True
                    break
                await trio.sleep(0.25)
        if report.dead_inbox_removed is None:
            report.dead_inbox_removed = False
    node_ids = [n.decode() for n in await store.execute("ZRANGE", keys.nodes, 0, -1)]
    for node_id in node_ids:
        members = await store.execute("SMEMBERS", keys.node_jobs(node_id))
        used = await store.execute("HGET", keys.node(node_id), "used")
        if used is not None and int(used) > 0:
            report.nodes_with_used += 1
        for job_id in members:
            state = await store.execute("HGET", keys.job(job_id.decode()), "state")
            if state is None or state.decode() in TERMINAL:
                report.stale_slots += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schedd.devtools.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", default="single",
                        choices=["single", "aof", "sentinel", "cluster"])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--kill-redis", action="store_true",
                        help="kill -9 the Redis master mid-run (sentinel, cluster)")
    parser.add_argument("--no-chaos", action="store_true",
                        help="kill nothing: a throughput baseline")
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="submits per second (default: as fast as possible)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = ChaosSettings(
        nodes=args.nodes, jobs=args.jobs, instances=args.instances, capacity=args.capacity,
        kill_instance=not args.no_chaos, kill_nodes=0.0 if args.no_chaos else 0.05,
        restart_node=not args.no_chaos, kill_redis=args.kill_redis, settle=args.settle,
        rate=args.rate,
    )
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a socket per node and client
    with redis_topology(args.topology) as (url, topology):
        report = trio.run(
            lambda: run_chaos(url, settings, topology=topology, topology_name=args.topology)
        )
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
