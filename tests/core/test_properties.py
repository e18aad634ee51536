"""Property test: concurrent submitters, completions, rejections, node losses and capability
changes never overfill a node, every accepted job ends in exactly one terminal state with one
done, and free-slot bookkeeping returns to full capacity."""

from __future__ import annotations

import random
import socket
import uuid
from collections import Counter
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedd import errors
from schedd.core import AssignDelivery, CancelJob, Core, DoneDelivery, Queries
from schedd.store import open_store
from schedd.store.base import Store
from tests.core.helpers import make_core, spec

POOLS = ["a", "b", "c"]

# Atomic snapshot of the slot bookkeeping: for every registered node, its capacity, its 'used'
# field, the size of its job set, its state, and its score in each pool it belongs to.
SNAPSHOT = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HMGET', KEYS[2] .. 'node:' .. id, 'capacity', 'used', 'state', 'pools')
  local held = redis.call('SCARD', KEYS[2] .. 'node:' .. id .. ':jobs')
  local scores = {}
  for _, p in ipairs(cjson.decode(h[4] or '[]')) do
    scores[#scores + 1] = redis.call('ZSCORE', KEYS[2] .. 'pool:' .. p, id) or -1
  end
  out[#out + 1] = {id, h[1], h[2], h[3], held, scores}
end
return out
"""

op = st.one_of(
    st.tuples(st.just("submit"), st.lists(st.sampled_from(POOLS), min_size=1, max_size=2,
                                          unique=True), st.integers(0, 2)),
    st.tuples(st.just("finish"), st.booleans(), st.integers(0, 10**6)),
    st.tuples(st.just("reject"), st.integers(0, 10**6)),
    st.tuples(st.just("cancel"), st.integers(0, 10**6)),
    st.tuples(st.just("lose"), st.integers(0, 3)),
    st.tuples(st.just("register"), st.integers(0, 3), st.integers(1, 3),
              st.lists(st.sampled_from(POOLS), min_size=1, max_size=3, unique=True)),
)


class Sim:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.epochs: dict[str, int] = {}
        self.capacity: dict[str, int] = {}
        self.accepted: list[str] = []
        self.done: Counter[str] = Counter()
        self.seen: dict[str, int] = {}
        # job -> (node, attempt, node epoch at assignment), as the nodes see it
        self.running: dict[str, tuple[str, int, int]] = {}

    def on_delivery(self, delivery: Any) -> None:
        # Deliveries of different scripts may be dispatched in another order than the scripts
        # ran (each caller dispatches its own reply's deliveries when it resumes), exactly as in
        # the daemon; so, like a real node, keep only the newest attempt and never revive a job
        # after its done.
        if isinstance(delivery, AssignDelivery):
            if delivery.job_id in self.done or delivery.attempt < self.seen.get(delivery.job_id, 0):
                return
            self.seen[delivery.job_id] = delivery.attempt
            self.running[delivery.job_id] = (delivery.node_id, delivery.attempt, delivery.epoch)
        elif isinstance(delivery, CancelJob):
            if self.running.get(delivery.job_id, ("", 0, 0))[1] == delivery.attempt:
                del self.running[delivery.job_id]
        elif isinstance(delivery, DoneDelivery):
            self.done[delivery.job_id] += 1
            self.running.pop(delivery.job_id, None)

    async def register(self, index: int, capacity: int, pools: list[str]) -> None:
        node_id = f"n{index}"
        reg = await self.core.register_node(node_id=node_id, capacity=capacity, pools=pools)
        self.epochs[node_id] = reg.epoch
        self.capacity[node_id] = capacity

    async def run(self, step: tuple[Any, ...], rng: random.Random) -> None:
        kind = step[0]
        try:
            if kind == "submit":
                sub = await self.core.submit(spec(*step[1], priority=step[2], max_attempts=3))
                self.accepted.append(sub.job_id)
            elif kind in ("finish", "reject") and self.running:
                job_id = sorted(self.running)[step[-1] % len(self.running)]
                node_id, attempt, _ = self.running[job_id]
                if kind == "finish":
                    await self.core.result(job_id, node_id=node_id, attempt=attempt, ok=step[1])
                else:
                    self.running.pop(job_id, None)
                    await self.core.reject(job_id, node_id=node_id, attempt=attempt, reason="r")
            elif kind == "cancel" and self.accepted:
                await self.core.cancel(self.accepted[step[1] % len(self.accepted)])
            elif kind == "lose":
                node_id = f"n{step[1]}"
                if node_id in self.epochs:
                    epoch = self.epochs[node_id]
                    await self.core.node_offline(node_id, epoch=epoch, reason="lost")
                    # what the node held up to that epoch is gone (a concurrent registration
                    # may already have handed the node new work under a newer epoch)
                    for job_id, (holder, _, at) in list(self.running.items()):
                        if holder == node_id and at <= epoch:
                            del self.running[job_id]
            elif kind == "register":
                await self.register(step[1], step[2], step[3])
        except (errors.StaleAttempt, errors.StaleEpoch, errors.InvalidState):
            pass  # a concurrent step got there first: exactly what fencing is for
        await self.check(rng)

    async def check(self, rng: random.Random) -> None:
        k = self.core.keys
        for node_id, cap, used, state, held, scores in await self.core.store.execute(
            "EVAL", SNAPSHOT, 2, k.nodes, k.prefix
        ):
            cap, used = int(cap), int(used)
            assert held <= cap, f"node {node_id!r} holds {held} jobs with capacity {cap}"
            assert used == held, f"node {node_id!r}: used {used} but holds {held}"
            if state == b"online":
                assert all(int(s) == cap - used for s in scores), (node_id, scores)
            else:
                assert all(int(s) == -1 for s in scores), (node_id, state, scores)


def _flush(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(16).startswith(b"+OK")


async def _scenario(url: str, program: list[tuple[Any, ...]], workers: int, seed: int) -> None:
    async with open_store(url) as store:
        await _run(store, program, workers, seed)


async def _run(store: Store, program: list[tuple[Any, ...]], workers: int, seed: int) -> None:
    core, _ = await make_core(store)
    sim = Sim(core)
    core.on_delivery = sim.on_delivery
    rng = random.Random(seed)
    await sim.register(0, 2, ["a", "b"])
    chunks = [program[i::workers] for i in range(workers)]

    async def worker(steps: list[tuple[Any, ...]]) -> None:
        for step in steps:
            await sim.run(step, rng)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for chunk in chunks:
                nursery.start_soon(worker, chunk)
        # Bring every node back with every pool, then finish whatever is left.
        for index in range(4):
            await sim.register(index, 2, POOLS)
        for _ in range(1000):
            if not sim.running:
                break
            job_id, (node_id, attempt, _) = sorted(sim.running.items())[0]
            try:
                await core.result(job_id, node_id=node_id, attempt=attempt, ok=True)
            except errors.StaleAttempt:
                sim.running.pop(job_id, None)
            await sim.check(rng)
    q = Queries(store, core.keys)
    counts = await q.counts()
    assert counts["queued"] == counts["assigned"] == counts["running"] == 0, counts
    for job_id in sim.accepted:
        info = await q.job(job_id)
        assert info is not None and info.state in ("done", "failed", "canceled", "timed_out")
        assert sim.done[job_id] == 1, f"{job_id} got {sim.done[job_id]} done messages"
    assert sum(counts[s] for s in ("done", "failed", "canceled", "timed_out")) == len(sim.accepted)
    for pool in await q.pools():
        assert pool.free_slots == 2 * len(pool.members), pool


@pytest.mark.parametrize("backend", ["memory", "redis"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(program=st.lists(op, min_size=1, max_size=60), workers=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_slots_and_terminal_states(
    backend: str, request: pytest.FixtureRequest, program: list[tuple[Any, ...]], workers: int,
    seed: int,
) -> None:
    if backend == "memory":
        url = f"memory://prop-{uuid.uuid4().hex}"
    else:
        server = request.getfixturevalue("redis_server")
        _flush(server.port)
        url = server.url
    trio.run(_scenario, url, program, workers, seed)
