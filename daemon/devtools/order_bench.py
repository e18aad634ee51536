"""The ORDER scenario: one ordered session of many utterances over several nodes and instances
while nodes and the client's instance are killed; do the results reach the client in order,
none lost, none duplicated?

::

    schedd bench --scenarios ORDER               # 1,000 utterances (--scale tiny: 100)

Rules of this module:

* Everything is real, as in :mod:`schedd.devtools.chaos` (whose ``schedd run`` processes it
  reuses): a ``redis-server``, several instances, :class:`schedd.sdk.Node` fleets and one
  :class:`schedd.sdk.Client` that submits every utterance of one session with its ``seq``
  (bounded in flight, slots taken in seq order, so the session always has results waiting
  behind unfinished ones).
* Chaos, by progress of the accepted submits: a fraction of the nodes killed (their jobs are
  retried elsewhere: the session waits for them, its gap timeout is longer than a retry), one
  killed node restarted, and ``kill -9`` of the instance the client is connected to (the SDK
  reconnects to another instance and follows the session: what the dead one's inbox held moves).
* The verdict counts what the client received on the wire for the session, before the SDK's
  de-duplication: every seq exactly once (``done``, or inside a ``skipped`` range), in
  increasing order; a seq never received within the settle time is lost.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import trio

from schedd.devtools.chaos import ChaosSettings, DaemonProcess, redis_topology
from schedd.protocol import Done, Skipped
from schedd.sdk import Client, ConnectFailed, JobContext, Node, RequestFailed

__all__ = ["OrderReport", "run_order"]

log = logging.getLogger(__name__)

POOL = "order"
SESSION = "utterances"


@attrs.define
class OrderReport:
    utterances: int
    nodes: int
    instances: int
    accepted: int = 0
    received: int = 0  # seqs received (done or skipped), duplicates included
    done: int = 0
    failed: int = 0
    skipped: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    lost: int = 0
    submit_retries: int = 0
    retry_reasons: Counter[str] = attrs.Factory(Counter)
    elapsed: float = 0.0
    events: list[str] = attrs.Factory(list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.duplicates == 0 and self.out_of_order == 0
                and self.accepted == self.utterances)

    def lines(self) -> list[str]:
        return [
            f"{self.utterances} utterances in one session, {self.nodes} nodes, "
            f"{self.instances} instances",
            *(f"  {event}" for event in self.events),
            f"  accepted {self.accepted} ({self.submit_retries} submit retries"
            + "".join(f"; {n}x {why}" for why, n in list(self.retry_reasons.items())[:3]) + ")",
            f"  received {self.received}: done {self.done}, failed {self.failed}, "
            f"skipped {self.skipped}",
            f"  out of order {self.out_of_order}, duplicates {self.duplicates}, lost {self.lost}"
            f" -> {'OK' if self.ok else 'FAILED'}",
            f"  {self.elapsed:.1f} s, {self.utterances / max(self.elapsed, 1e-9):.0f} "
            "utterances/s",
        ]


class _SessionRecorder(Client):
    """A client that records every result of the session it receives on the wire, in order."""

    seen: list[tuple[int, int]]  # (first seq, last seq) of each done / skipped, as received
    states: Counter[str]
    arrived: trio.Event

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Done) and message.session_id == SESSION and message.seq is not None:
            self.seen.append((message.seq, message.seq))
            self.states[message.state] += 1
            self.arrived.set()
        elif isinstance(message, Skipped) and message.session_id == SESSION:
            self.seen.append((message.from_seq, message.to_seq))
            self.states["skipped"] += message.to_seq - message.from_seq + 1
            self.arrived.set()
        await super()._on_message(message)


async def run_order(p: dict[str, Any], say: Any = print) -> OrderReport:
    """One ORDER run with the scale's parameters ``p``; returns the verdict."""
    utterances, nodes, instances = int(p["utterances"]), int(p["nodes"]), int(p["instances"])
    report = OrderReport(utterances, nodes, instances)
    settings = ChaosSettings(nodes=nodes, instances=instances, namespace="order",
                             heartbeat_interval=0.25)
    folder = Path(tempfile.mkdtemp(prefix="schedd-order-"))
    with redis_topology("single") as (url, _topology):
        daemons = [DaemonProcess(folder, url, settings, i) for i in range(instances)]
        try:
            async with trio.open_nursery() as starting:
                for daemon in daemons:
                    starting.start_soon(daemon.start)
            await _drive(report, p, [d.url for d in daemons], daemons)
        finally:
            for daemon in daemons:
                daemon.stop()
    for line in report.lines():
        say(f"  ORDER {line}")
    return report


async def _drive(report: OrderReport, p: dict[str, Any], urls: list[str],
                 daemons: list[DaemonProcess]) -> None:
    low, high = p["job_seconds"]

    async def work(ctx: JobContext) -> Any:
        await trio.sleep(random.uniform(low, high))
        return {"seq": ctx.payload}

    scopes: dict[str, trio.CancelScope] = {}

    async def run_node(node_id: str, first: int, *, task_status: trio.TaskStatus[None]) -> None:
        node = Node([*urls[first:], *urls[:first]], work, pools=[POOL], node_id=node_id,
                    capacity=int(p["capacity"]), reconnect_delay=0.1)
        with trio.CancelScope() as scope:
            scopes[node_id] = scope
            await node.run(task_status=task_status)

    total = report.utterances
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as starting:
            for i in range(report.nodes):
                # the nodes on the instances the client is not on: the client's instance dies
                starting.start_soon(nursery.start, run_node, f"on-{i:03d}", 1 + i % (len(urls) - 1))
        async with _SessionRecorder.connect(urls, connect_timeout=2.0) as client:
            assert isinstance(client, _SessionRecorder)
            client.seen, client.states, client.arrived = [], Counter(), trio.Event()
            client.session(SESSION)
            started = time.monotonic()
            kills = {int(total * 0.3): "nodes", int(total * 0.5): "instance",
                     int(total * 0.7): "nodes"}

            async def chaos(what: str) -> None:
                if what == "instance":
                    daemons[0].kill()
                    report.events.append(
                        f"kill -9 of {daemons[0].name} (the client's) at {report.accepted} "
                        "accepted")
                    return
                count = max(1, int(len(scopes) * float(p["kill_nodes"])))
                victims = random.sample(sorted(scopes), count)
                for node_id in victims:
                    scopes.pop(node_id).cancel()
                report.events.append(f"killed {count} nodes at {report.accepted} accepted")
                await trio.sleep(0.5)
                await nursery.start(run_node, victims[0], 1 + len(scopes) % (len(urls) - 1))
                report.events.append(f"restarted node {victims[0]}")

            async def submit(seq: int) -> None:
                try:
                    with trio.fail_after(120):
                        while True:
                            try:
                                await client.submit(seq, pools=[POOL], job_id=f"utt-{seq:05d}",
                                                    session_id=SESSION, seq=seq,
                                                    gap_timeout=float(p["gap_timeout"]))
                                break
                            except (RequestFailed, ConnectFailed) as exc:
                                report.submit_retries += 1
                                report.retry_reasons[str(exc)[:80]] += 1
                                log.debug("submit %s: %s; retrying", seq, exc)
                                await trio.sleep(0.1)
                    report.accepted += 1
                    if report.accepted in kills:
                        nursery.start_soon(chaos, kills[report.accepted])
                    # bounded in flight: the slot is free once this seq's turn came
                    while not _covered(client.seen, seq):
                        arrived = client.arrived
                        await arrived.wait()
                        if client.arrived is arrived:
                            client.arrived = trio.Event()
                finally:
                    slots.release()

            # slots are taken in seq order: a seq never waits for a slot a later one holds
            slots = trio.Semaphore(int(p["in_flight"]))
            with trio.move_on_after(float(p["settle"]) + total / 10):
                async with trio.open_nursery() as jobs:
                    for seq in range(total):
                        await slots.acquire()
                        jobs.start_soon(submit, seq)
            report.elapsed = time.monotonic() - started
            await trio.sleep(1.0)  # a duplicate would come right behind the first
            _judge(report, client.seen, client.states)
        nursery.cancel_scope.cancel()


def _covered(seen: list[tuple[int, int]], seq: int) -> bool:
    return bool(seen) and seen[-1][1] >= seq


def _judge(report: OrderReport, seen: list[tuple[int, int]], states: Counter[str]) -> None:
    counts: Counter[int] = Counter()
    last = -1
    for first, end in seen:
        if first <= last:
            report.out_of_order += 1
        last = max(last, end)
        for seq in range(first, end + 1):
            counts[seq] += 1
    report.received = sum(counts.values())
    report.duplicates = sum(1 for n in counts.values() if n > 1)
    report.lost = sum(1 for seq in range(report.utterances) if counts[seq] == 0)
    report.done, report.failed = states["done"], states["failed"]
    report.skipped = states["skipped"]
