"""The bench's lean clients and fleets, and the record of every job they submit."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import orjson
import trio

from schedd.devtools.bench.measure import DRAIN_TIMEOUT, PAYLOAD, POOL, Say, percentiles
from schedd.devtools.sim import Fleet, SimNode, raise_fd_limit
from schedd.protocol import PROTOCOL_VERSION
from schedd.sdk.connect import open_channel
from schedd.transport.channel import Channel, ChannelClosed


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
    """A lean client connection: submits with the bench's job ids, records every done.

    :param token: the client token sent in ``hello`` (its principal owns the jobs); none: no
        token.
    :param pool: the pool every submit names.
    """

    def __init__(self, url: str, recorder: Recorder, *, token: str | None = None,
                 pool: str = POOL) -> None:
        self.url = url
        self.recorder = recorder
        self.token = token
        self.pool = pool
        self.channel: Channel | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with open_channel(self.url, connect_timeout=30) as channel:
            hello: dict[str, Any] = {"type": "hello", "role": "client",
                                     "version": PROTOCOL_VERSION, "name": "bench"}
            if self.token is not None:
                hello["token"] = self.token
            await channel.send(orjson.dumps(hello))
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
        frame = orjson.dumps({"type": "submit", "job_id": job_id, "pools": [self.pool],
                              "payload": PAYLOAD})
        record = JobRecord(submitted=time.perf_counter(),
                           event=trio.Event() if waiter else None)
        self.recorder.jobs[job_id] = record
        await self.channel.send(frame)
        return record


@asynccontextmanager
async def open_clients(url: str, recorder: Recorder, count: int, *, token: str | None = None,
                       pool: str = POOL) -> Any:
    async with trio.open_nursery() as nursery:
        clients = [BenchClient(url, recorder, token=token, pool=pool) for _ in range(count)]
        for client in clients:
            await nursery.start(client.run)
        yield clients
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_fleet(url: str, nodes: int, say: Say, *, pool: str = POOL,
                     **kwargs: Any) -> Any:
    raise_fd_limit()
    started = time.perf_counter()
    fleet = Fleet([url], nodes, pools=[pool], **kwargs)
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
