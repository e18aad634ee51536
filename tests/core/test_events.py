"""Every job state change and node loss is reported once, to the instance whose script made it."""

from __future__ import annotations

from schedd.core import Event, JobStateChanged, NodeWentOffline
from schedd.store.base import Store
from tests.core.helpers import make_core, spec


async def test_events_follow_the_state_machine(store: Store) -> None:
    core, _ = await make_core(store)
    events: list[Event] = []
    core.on_event = events.append
    r1 = await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    await core.node_offline("n1", epoch=r1.epoch, reason="connection lost")
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    await core.result(sub.job_id, node_id="n2", attempt=2, ok=True)
    queued = await core.submit(spec("nobody-serves-this"))
    await core.cancel(queued.job_id)
    j = sub.job_id
    assert events == [
        JobStateChanged(job_id=j, state="assigned", attempt=1, node="n1"),
        JobStateChanged(job_id=j, state="running", attempt=1, node="n1"),
        JobStateChanged(job_id=j, state="queued", attempt=2, node=None),
        NodeWentOffline(node_id="n1", reason="connection lost"),
        JobStateChanged(job_id=j, state="assigned", attempt=2, node="n2"),
        JobStateChanged(job_id=j, state="done", attempt=2, node="n2"),
        JobStateChanged(job_id=queued.job_id, state="queued", attempt=1, node=None),
        JobStateChanged(job_id=queued.job_id, state="canceled", attempt=0, node=None),
    ]


async def test_a_broken_event_listener_does_not_fail_the_call(store: Store) -> None:
    core, _ = await make_core(store)

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    core.on_event = broken
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    assert sub.state == "assigned"
