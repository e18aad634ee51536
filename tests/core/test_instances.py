"""Two core instances in one process on one Redis: delivery through inbox streams."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from schedd.core import (
    AssignDelivery,
    CancelJob,
    Core,
    DoneDelivery,
    ProgressDelivery,
    serve_inbox,
)
from schedd.store import open_store
from schedd.store.base import Store
from tests.core.helpers import Recorder, make_core, spec


@asynccontextmanager
async def two_stores(store_url: str) -> AsyncIterator[tuple[Store, Store]]:
    url = f"memory://shared-{uuid.uuid4().hex}" if store_url == "memory://" else store_url
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(open_store(url))
        b = await stack.enter_async_context(open_store(url))
        yield a, b


@asynccontextmanager
async def two_instances(
    store_url: str,
) -> AsyncIterator[tuple[tuple[Core, Recorder, Store], tuple[Core, Recorder, Store]]]:
    """Instances A and B on one store, each serving its inbox, for at most 10 s."""
    async with two_stores(store_url) as (store_a, store_b):
        a, rec_a = await make_core(store_a, "A")
        b, rec_b = await make_core(store_b, "B")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_inbox, a)
                await nursery.start(serve_inbox, b)
                yield (a, rec_a, store_a), (b, rec_b, store_b)
                nursery.cancel_scope.cancel()


async def test_assignment_and_result_cross_instances(store_url: str) -> None:
    async with two_instances(store_url) as ((a, rec_a, store_a), (b, rec_b, _)):
        await b.register_node(node_id="n1", capacity=1, pools=["p"])
        sub = await a.submit(spec("p", payload={"hi": 1}), principal="alice")
        assert rec_a.of(AssignDelivery) == []  # not A's node: it went to B's inbox
        (assign,) = await rec_b.wait_for(AssignDelivery)
        assert (assign.job_id, assign.node_id, assign.payload_json) == (
            sub.job_id, "n1", '{"hi":1}')
        await b.accept(sub.job_id, node_id="n1", attempt=1)
        await b.progress(sub.job_id, node_id="n1", attempt=1, data_json='"half"')
        await b.result(sub.job_id, node_id="n1", attempt=1, ok=True, output_json='"ok"')
        await rec_a.wait_for(DoneDelivery)
        assert [p.data_json for p in rec_a.of(ProgressDelivery)] == ['"half"']
        (done,) = rec_a.of(DoneDelivery)
        assert done.ok and done.output_json == '"ok"' and done.node == "n1"
        assert rec_b.of(DoneDelivery) == []
        # a cancel from A for B's node reaches B
        second = await a.submit(spec("p"), principal="alice")
        await rec_b.wait_for(AssignDelivery, 2)
        await a.cancel(second.job_id, principal="alice")
        (cancel,) = await rec_b.wait_for(CancelJob)
        assert cancel.job_id == second.job_id
        await rec_a.wait_for(DoneDelivery, 2)
        # everything delivered was removed from the inboxes
        assert await store_a.execute("XLEN", a.keys.inbox("A")) == 0
        assert await store_a.execute("XLEN", a.keys.inbox("B")) == 0


async def test_inbox_survives_instance_restart(store_url: str) -> None:
    """Deliveries appended while an instance is not reading are delivered when it reads."""
    async with two_stores(store_url) as (store_a, store_b):
        a, _ = await make_core(store_a, "A")
        await a.register_node(node_id="n1", capacity=5, pools=["p"])
        b, _ = await make_core(store_b, "B")
        jobs = [(await b.submit(spec("p"))).job_id for _ in range(3)]
        for job_id in jobs:
            await a.result(job_id, node_id="n1", attempt=1, ok=True)
        b2, rec = await make_core(store_b, "B")  # B "restarted" with the same instance id
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_inbox, b2)
                done = await rec.wait_for(DoneDelivery, 3)
                nursery.cancel_scope.cancel()
        assert [d.job_id for d in done] == jobs
