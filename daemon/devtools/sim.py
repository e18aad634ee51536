"""Simulated nodes: thousands of lean protocol peers in one trio process (``schedd sim``).

Rules of this module:

* A simulated node speaks the wire protocol directly (``schedd.sdk.connect.open_channel`` plus
  pre-encoded JSON), not through :class:`schedd.sdk.Node`: per node it keeps one channel, one
  receiving task and a few fields, so 10,000 nodes fit in one process. It follows the node
  checklist of docs/protocol.md: hello, register, heartbeat every ``heartbeat_interval``, accept
  every ``assign`` at once, one ``result`` after the simulated duration, drop cancelled attempts,
  reconnect and re-register (listing its running jobs) after a lost connection.
* Heartbeats of all nodes are sent by one ticker task, spread evenly over the interval (a task
  per node would cost 10,000 timers).
* The simulation is observable: :class:`Fleet` counts everything in :class:`SimStats` and calls
  ``on_assign`` for every assignment it receives (the bench stamps it with its monotonic clock).
* Faults on purpose: ``fail_rate`` (a result with ``ok: false``), ``disconnect_rate`` (a node
  drops its connection and reconnects), and :meth:`Fleet.kill` for the benchmark's failover
  scenario: ``"drop"`` closes the connection for good, ``"silent"`` keeps the socket open but
  stops reading, heartbeating and answering.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs
import orjson
import trio

from schedd.errors import ProtocolError
from schedd.protocol import PROTOCOL_VERSION
from schedd.runtime import serve_gc_settler
from schedd.sdk.connect import open_channel
from schedd.transport.channel import Channel, ChannelClosed

__all__ = [
    "Duration",
    "Fleet",
    "SimNode",
    "SimStats",
    "lang_capabilities",
    "parse_duration",
    "raise_fd_limit",
]

log = logging.getLogger(__name__)

#: Nodes connecting at the same time while a fleet starts (a connection storm of 10,000 would
#: overflow the daemon's listen backlog).
CONNECT_CONCURRENCY: Final = 200
#: Most heartbeat ticks per interval; each tick beats 1/ticks of the fleet, about BEAT_CHUNK
#: nodes (fleet_ticks). Real nodes beat at independent phases, a smooth stream; a few large
#: ticks would hand the daemon bursts no real fleet sends, and every job submitted meanwhile
#: would wait behind them (docs/decisions/0015-benchmark-method.md).
MAX_TICKS: Final = 1000
#: Nodes one heartbeat task sends for. Every send is a trio checkpoint that waits for one round
#: of all runnable tasks; while thousands of nodes connect a round takes milliseconds, and one
#: task beating a whole slice in turn fell seconds behind (nodes expired during the ramp).
BEAT_CHUNK: Final = 10
RECONNECT_DELAY: Final = 0.5
#: Errors after which a node's connection no longer speaks for it: reconnect.
_FINISHED: Final = frozenset({"E_NO_NODE", "E_STALE_EPOCH", "E_WRONG_OWNER"})
_IDLE_BEAT: Final = b'{"type":"heartbeat","inflight":0,"running":[],"load":0.0}'

Duration = Callable[[], float]
AssignHook = Callable[[str, int, "SimNode"], None]


def fleet_ticks(nodes: int) -> int:
    """Heartbeat ticks per interval for a fleet: about BEAT_CHUNK beats each, at most
    MAX_TICKS."""
    return max(1, min(MAX_TICKS, nodes // BEAT_CHUNK))


def parse_duration(spec: str) -> Duration:
    """``fixed:S``, ``uniform:A,B`` or ``exp:MEAN`` (seconds) as a sampler; ValueError if bad."""
    kind, _, rest = spec.partition(":")
    try:
        values = [float(v) for v in rest.split(",")] if rest else []
    except ValueError:
        raise ValueError(f"bad duration {spec!r}: numbers expected") from None
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"bad duration {spec!r}: seconds must be finite and >= 0")
    if kind == "fixed" and len(values) == 1:
        value = values[0]
        return lambda: value
    if kind == "uniform" and len(values) == 2 and values[0] <= values[1]:
        low, high = values
        return lambda: random.uniform(low, high)
    if kind == "exp" and len(values) == 1:
        mean = values[0]
        return (lambda: random.expovariate(1 / mean)) if mean > 0 else (lambda: 0.0)
    raise ValueError(f"bad duration {spec!r}: use fixed:S, uniform:A,B or exp:MEAN")


def lang_capabilities(langs: Sequence[str]) -> dict[str, Any]:
    """Capabilities of a node serving ``langs`` for every service the langset plugin knows."""
    return {"asr_langs": list(langs), "semantic_langs": list(langs), "tts_langs": list(langs)}


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


@attrs.define
class SimStats:
    """Counters of one fleet (monotonic; rates are differences between two snapshots)."""

    connected: int = 0
    registered: int = 0
    assigns: int = 0
    results_ok: int = 0
    results_failed: int = 0
    cancels: int = 0
    errors: int = 0
    stale: int = 0  # E_STALE_ATTEMPT answers (a job that moved on)
    disconnects: int = 0
    reconnects: int = 0
    heartbeats: int = 0
    last_error: str = ""

    def snapshot(self) -> dict[str, Any]:
        return attrs.asdict(self)


class SimNode:
    """One simulated node: its identity, its connection and the attempts it is running."""

    __slots__ = (
        "_beat_cache",
        "capabilities",
        "capacity",
        "channel",
        "epoch",
        "fleet",
        "killed",
        "node_id",
        "pools",
        "running",
        "scope",
        "silent",
    )

    def __init__(self, fleet: Fleet, node_id: str, capacity: int, pools: list[str],
                 capabilities: dict[str, Any]) -> None:
        self.fleet = fleet
        self.node_id = node_id
        self.capacity = capacity
        self.pools = pools
        self.capabilities = capabilities
        self.channel: Channel | None = None
        self.epoch = 0
        self.running: dict[str, int] = {}  # job id -> attempt
        self.scope: trio.CancelScope | None = None
        self.killed = False
        self.silent = False
        self._beat_cache: bytes | None = None

    def heartbeat_frame(self) -> bytes:
        if not self.running:
            return _IDLE_BEAT
        return orjson.dumps({"type": "heartbeat", "inflight": len(self.running),
                             "running": list(self.running), "load": 0.0})

    async def send(self, message: dict[str, Any] | bytes) -> bool:
        channel = self.channel
        if channel is None or self.silent:
            return False
        data = message if isinstance(message, bytes) else orjson.dumps(message)
        try:
            await channel.send(data)
        except ChannelClosed:
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, register, serve; reconnect after a lost connection until killed."""
        fleet = self.fleet
        started = False
        while not self.killed:
            try:
                # One limiter slot from connect to `registered`: a node that connected must
                # say hello before the daemon's handshake timeout.
                async with fleet.connect_limit:
                    channel_cm = open_channel(fleet.urls[hash(self.node_id) % len(fleet.urls)],
                                              connect_timeout=fleet.connect_timeout)
                    channel = await channel_cm.__aenter__()
                    fleet.stats.connected += 1
                    try:
                        await self._handshake(channel)
                    except BaseException:
                        fleet.stats.connected -= 1
                        with trio.CancelScope(shield=True):
                            await channel_cm.__aexit__(None, None, None)
                        raise
                try:
                    with trio.CancelScope() as self.scope:
                        if not started:
                            started = True
                            task_status.started()
                        await self._serve(channel)
                finally:
                    self.channel = None
                    fleet.stats.connected -= 1
                    with trio.CancelScope(shield=True):
                        await channel_cm.__aexit__(None, None, None)
            except (ChannelClosed, ProtocolError, OSError) as exc:
                fleet.stats.last_error = f"{type(exc).__name__}: {exc}"
            if self.killed:
                break
            if not started and fleet.stop_on_failure:
                raise RuntimeError(f"node {self.node_id} could not register: "
                                   f"{fleet.stats.last_error}")
            fleet.stats.disconnects += 1
            self.silent = False
            await trio.sleep(RECONNECT_DELAY * (0.5 + random.random()))
            fleet.stats.reconnects += 1
        if not started:
            task_status.started()

    async def _handshake(self, channel: Channel) -> None:
        fleet = self.fleet
        await channel.send(orjson.dumps({"type": "hello", "role": "node", "token": fleet.token,
                                         "version": PROTOCOL_VERSION, "name": self.node_id}))
        welcome = orjson.loads(await channel.receive())
        if welcome.get("type") != "welcome":
            raise ChannelClosed(f"hello refused: {welcome}")
        fleet.heartbeat_interval = float(welcome["heartbeat_interval"])
        running = [{"job_id": j, "attempt": a} for j, a in self.running.items()]
        await channel.send(orjson.dumps({
            "type": "register", "node_id": self.node_id, "capacity": self.capacity,
            "capabilities": self.capabilities, "pools": self.pools, "running": running,
            "ref": "r"}))
        # Assignments may precede nothing: `registered` comes first (the daemon holds them).
        registered = orjson.loads(await channel.receive())
        if registered.get("type") != "registered":
            raise ChannelClosed(f"register refused: {registered}")
        self.epoch = int(registered["epoch"])
        self.channel = channel
        fleet.stats.registered += 1
        fleet.beating.add(self)

    async def _serve(self, channel: Channel) -> None:
        fleet = self.fleet
        try:
            while True:
                raw = await channel.receive()
                if self.silent:
                    await trio.sleep_forever()  # a hung process: the socket stays open, unread
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "assign":
                    await self._assign(message)
                elif kind == "cancel":
                    fleet.stats.cancels += 1
                    job_id = message["job_id"]
                    if self.running.get(job_id) == message.get("attempt", self.running.get(job_id)):
                        self.running.pop(job_id, None)
                elif kind == "error":
                    code = message.get("code", "")
                    if code == "E_STALE_ATTEMPT":
                        fleet.stats.stale += 1
                        self.running.pop(message.get("job_id") or "", None)
                        continue
                    fleet.stats.errors += 1
                    fleet.stats.last_error = f"{code}: {message.get('message', '')}"
                    if code in _FINISHED and not message.get("job_id"):
                        return
                elif kind == "ping":
                    await self.send({"type": "pong", "ref": message.get("ref")})
                elif kind == "drain":
                    pass  # no new work will come; keep serving what runs
        finally:
            fleet.beating.discard(self)

    async def _assign(self, message: dict[str, Any]) -> None:
        fleet = self.fleet
        job_id: str = message["job_id"]
        attempt: int = message["attempt"]
        fleet.stats.assigns += 1
        if fleet.on_assign is not None:
            fleet.on_assign(job_id, attempt, self)
        self.running[job_id] = attempt
        accept = orjson.dumps({"type": "accept", "job_id": job_id, "attempt": attempt})
        duration = fleet.duration()
        channel = self.channel
        if duration <= 0 and channel is not None and hasattr(channel, "send_many") \
                and not self.silent:
            # a zero-length job: accept and result in one write
            result, ok = self._result(job_id, attempt)
            try:
                await channel.send_many([accept, result])
            except ChannelClosed:
                return
            self._count_result(job_id, ok)
            return
        await self.send(accept)
        if duration <= 0:
            await self._finish(job_id, attempt)
        else:
            assert fleet.nursery is not None
            fleet.nursery.start_soon(self._finish_later, job_id, attempt, duration)

    async def _finish_later(self, job_id: str, attempt: int, duration: float) -> None:
        await trio.sleep(duration)
        if self.killed:
            return
        while self.channel is None or self.silent:  # reconnecting: the result waits for it
            if self.killed or self.running.get(job_id) != attempt:
                return
            await trio.sleep(0.05)
        await self._finish(job_id, attempt)

    def _result(self, job_id: str, attempt: int) -> tuple[bytes, bool]:
        """The result frame of an attempt (failed at ``fail_rate``) and whether it is ok."""
        fleet = self.fleet
        if fleet.fail_rate and random.random() < fleet.fail_rate:
            return orjson.dumps({"type": "result", "job_id": job_id, "attempt": attempt,
                                 "ok": False, "error": {"code": "E_SIM",
                                                        "message": "simulated failure"}}), False
        return orjson.dumps({"type": "result", "job_id": job_id, "attempt": attempt,
                             "ok": True, "output": self.fleet.output}), True

    def _count_result(self, job_id: str, ok: bool) -> None:
        if ok:
            self.fleet.stats.results_ok += 1
        else:
            self.fleet.stats.results_failed += 1
        self.running.pop(job_id, None)

    async def _finish(self, job_id: str, attempt: int) -> None:
        if self.running.get(job_id) != attempt:
            return  # cancelled meanwhile
        result, ok = self._result(job_id, attempt)
        if await self.send(result):
            self._count_result(job_id, ok)

    def drop(self) -> None:
        """Close the connection (the node reconnects unless killed)."""
        if self.scope is not None:
            self.scope.cancel()


class Fleet:
    """``nodes`` simulated nodes, started together, heartbeating from one ticker.

    :param urls: daemon URLs; node *i* uses one of them (by a hash of its id).
    :param nodes: how many nodes.
    :param capacity: job slots per node.
    :param pools: pool keys every node declares.
    :param capabilities: capabilities every node declares.
    :param duration: samples a job's run time in seconds.
    :param fail_rate: fraction of results sent with ``ok: false``.
    :param disconnect_rate: per node and second, probability of dropping the connection (the
        node reconnects and resumes its running jobs).
    :param on_assign: called as ``on_assign(job_id, attempt, node)`` for every ``assign``.
    """

    def __init__(
        self,
        urls: Sequence[str],
        nodes: int,
        *,
        capacity: int = 1,
        pools: Sequence[str] = (),
        capabilities: dict[str, Any] | None = None,
        duration: Duration = lambda: 0.0,
        fail_rate: float = 0.0,
        disconnect_rate: float = 0.0,
        token: str | None = None,
        prefix: str = "sim",
        on_assign: AssignHook | None = None,
        connect_timeout: float = 30.0,
        output: Any = None,
    ) -> None:
        self.urls = list(urls)
        self.token = token
        self.duration = duration
        self.fail_rate = fail_rate
        self.disconnect_rate = disconnect_rate
        self.on_assign = on_assign
        self.connect_timeout = connect_timeout
        self.output = output if output is not None else {"ok": 1}
        self.stats = SimStats()
        self.heartbeat_interval = 1.0
        self.connect_limit = trio.CapacityLimiter(CONNECT_CONCURRENCY)
        self.nursery: trio.Nursery | None = None
        self.beating: set[SimNode] = set()
        self.stop_on_failure = True
        self.nodes = [
            SimNode(self, f"{prefix}-{i:05d}", capacity, list(pools), dict(capabilities or {}))
            for i in range(nodes)
        ]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every node; report started once all registered; run until cancelled."""
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            # Beat from the start: a node registered early must not expire while the rest of a
            # large fleet is still connecting.
            nursery.start_soon(self._heartbeats)
            # the fleet's objects live until it stops: frozen out of the collector's passes as
            # they arrive (and out of the latencies measured next to it), see schedd.runtime
            nursery.start_soon(serve_gc_settler, lambda: self.stats.connected,
                               lambda: self.stats.registered)
            async with trio.open_nursery() as starting:
                for node in self.nodes:
                    starting.start_soon(nursery.start, node.run)
            self.stop_on_failure = False
            if self.disconnect_rate > 0:
                nursery.start_soon(self._chaos)
            task_status.started()

    async def _heartbeats(self) -> None:
        """Beat every registered node once per interval, 1/ticks of them each tick."""
        tick = 0
        ticks = fleet_ticks(len(self.nodes))
        slices = [self.nodes[i::ticks] for i in range(ticks)]
        chunks = [[nodes[j:j + BEAT_CHUNK] for j in range(0, len(nodes), BEAT_CHUNK)]
                  for nodes in slices]
        next_at = trio.current_time() + self.heartbeat_interval / ticks
        while True:
            await trio.sleep_until(next_at)
            assert self.nursery is not None
            now = trio.current_time()
            # Every tick that is due, not one per wake: a wake is one trio round, and while
            # thousands of nodes connect a round takes milliseconds, so one tick per round fell
            # a second behind (1,000 ticks a second) and nodes expired during the ramp.
            while next_at <= now:
                for chunk in chunks[tick]:
                    self.nursery.start_soon(self._beat, chunk)
                tick = (tick + 1) % ticks
                next_at += self.heartbeat_interval / ticks

    async def _beat(self, nodes: list[SimNode]) -> None:
        for node in nodes:
            if (node in self.beating and not node.silent
                    and await node.send(node.heartbeat_frame())):
                self.stats.heartbeats += 1

    async def _chaos(self) -> None:
        """Drop random connections at ``disconnect_rate`` per node and second."""
        step = 0.1
        while True:
            await trio.sleep(step)
            expected = self.disconnect_rate * step * len(self.nodes)
            count = int(expected) + (random.random() < expected - int(expected))
            for node in random.sample(self.nodes, min(count, len(self.nodes))):
                node.drop()

    def kill(self, node: SimNode, how: str) -> None:
        """``"drop"``: close the connection for good; ``"silent"``: stop reading, heartbeating
        and answering, keep the socket open."""
        if how == "drop":
            node.killed = True
            node.drop()
        elif how == "silent":
            node.silent = True
            node.killed = True
        else:
            raise ValueError(f"unknown kill {how!r}: drop or silent")


async def print_stats(fleet: Fleet, every: float, out: Callable[[str], None]) -> None:
    """Print a line of counters and rates every ``every`` seconds until cancelled."""
    last = fleet.stats.snapshot()
    last_t = time.monotonic()
    while True:
        await trio.sleep(every)
        now = fleet.stats.snapshot()
        now_t = time.monotonic()
        dt = now_t - last_t or 1.0

        def rate(key: str) -> float:
            return float(now[key] - last[key]) / dt  # noqa: B023

        out(f"nodes {now['connected']}/{len(fleet.nodes)} connected, "
            f"assign {rate('assigns'):.0f}/s, done {rate('results_ok'):.0f}/s, "
            f"failed {rate('results_failed'):.0f}/s, heartbeats {rate('heartbeats'):.0f}/s, "
            f"cancels {now['cancels']}, errors {now['errors']}, reconnects {now['reconnects']}"
            + (f" (last error: {now['last_error']})" if now["errors"] else ""))
        last, last_t = now, now_t
