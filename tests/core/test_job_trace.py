"""A job's trace context in the scripts (embedded store and redis-server): kept in the job hash,
carried by every assign (first, fed from a queue, retried) and by the done, returned for a
duplicate; a job submitted without one gets one of the core's."""

from __future__ import annotations

import re

from schedd.core import AssignDelivery, DoneDelivery, Queries
from schedd.store.base import Store
from tests.core.helpers import make_core, spec

TRACE = ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
         " congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")


async def test_the_trace_goes_with_every_assign_and_the_done(store: Store) -> None:
    core, rec = await make_core(store)
    sub = await core.submit(spec("p", job_id="j1", trace=TRACE), principal="alice")
    assert (sub.state, sub.trace) == ("queued", TRACE)
    info = await Queries(store, core.keys).job("j1")
    assert info is not None and info.trace == TRACE

    await core.register_node(node_id="n1", capacity=1, pools=["p"])  # fed from the queue
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    (first,) = await rec.wait_for(AssignDelivery)
    assert (first.node_id, first.trace) == ("n1", TRACE)
    await core.reject("j1", node_id="n1", attempt=1, reason="busy")  # retried on n2
    _, second = await rec.wait_for(AssignDelivery, 2)
    assert (second.node_id, second.attempt, second.trace) == ("n2", 2, TRACE)

    await core.result("j1", node_id="n2", attempt=2, ok=True, accepted=True)
    (done,) = await rec.wait_for(DoneDelivery)
    assert done.trace == TRACE

    again = await core.submit(spec("p", job_id="j1"), principal="alice")
    assert again.duplicate and again.trace == TRACE
    assert again.done is not None and again.done.trace == TRACE


async def test_a_job_without_a_trace_gets_one(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p", job_id="j1"))
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", sub.trace)
    (assign,) = rec.of(AssignDelivery)
    assert assign.trace == sub.trace
    await core.cancel("j1")
    (done,) = await rec.wait_for(DoneDelivery)
    assert done.trace == sub.trace
