"""Who receives a job's progress and done: only connections of the job's principal, the newest
follower of one (docs/protocol.md, "Cancel, status, follow"), over both transports and stores."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.core import Detach, DoneDelivery, ProgressDelivery, Queries
from schedd.errors import StoreUnavailable
from schedd.routes import Routes
from schedd.transport import StreamChannel, WebSocketChannel
from tests.daemon.harness import Daemon, running_daemon, wire_channels

TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": '["node-secret"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": '["alice-secret", "bob-secret"]',
    # the attacker's bursts must not be cut short by the rate limit
    "SCHEDD_LIMITS__MAX_MESSAGES_PER_SECOND": "100000",
}
JOBS = 40
#: most messages the attacker sends about one job
MAX_BURST = 200

Wire = StreamChannel | WebSocketChannel


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wire(d: Daemon, transport: str, role: str, token: str) -> Wire:
    """A connection over a real socket with the TCP transport's channel or the WebSocket
    transport's, past its welcome."""
    daemon_side, peer = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    await peer.send(p.encode(p.Hello(role=role, version=p.PROTOCOL_VERSION,  # type: ignore[arg-type]
                                     token=token)))
    assert isinstance(p.decode(await peer.receive()), p.Welcome)
    return peer


async def send(peer: Wire, *messages: p.Message) -> None:
    await peer.send_many([p.encode(m) for m in messages])


async def until_pong(peer: Wire, ref: str = "sync") -> list[p.Message]:
    """Everything the daemon sends ``peer`` up to the pong of a ping sent now."""
    await send(peer, p.Ping(ref=ref))
    seen: list[p.Message] = []
    with trio.fail_after(10):
        while True:
            message = p.decode(await peer.receive())
            if isinstance(message, p.Pong) and message.ref == ref:
                return seen
            seen.append(message)


async def expect(peer: Wire, kind: type[Any]) -> Any:
    with trio.fail_after(10):
        message = p.decode(await peer.receive())
    assert isinstance(message, kind), f"expected {kind.__name__}, got {message!r}"
    return message


@asynccontextmanager
async def daemon(store_url: str, **env: str) -> AsyncIterator[Daemon]:
    async with running_daemon(store_url, **TOKENS, **env) as d:
        yield d


async def node_of(d: Daemon, transport: str, node_id: str = "n1", capacity: int = 1) -> Wire:
    node = await wire(d, transport, "node", "node-secret")
    await send(node, p.Register(node_id=node_id, capacity=capacity, pools=["p"]))
    await expect(node, p.Registered)
    return node


@asynccontextmanager
async def node_and_clients(
    store_url: str, transport: str, *tokens: str,
) -> AsyncIterator[tuple[Wire, list[Wire]]]:
    """A daemon, node n1 (pool p) and a client connection for each token."""
    async with daemon(store_url) as d:
        node = await node_of(d, transport)
        yield node, [await wire(d, transport, "client", token) for token in tokens]


async def submitted(client: Wire, node: Wire, job_id: str, **submit: Any) -> p.Assign:
    """Submit a job on ``client``; the node's assign of it."""
    await send(client, p.Submit(job_id=job_id, pools=["p"], **submit))
    await expect(client, p.Accepted)
    assign: p.Assign = await expect(node, p.Assign)
    return assign


async def test_another_principal_never_receives_a_jobs_progress_or_done(
    store_url: str, transport: str,
) -> None:
    """Bob follows (or resubmits) Alice's jobs in a tight loop while they report progress and
    finish: every progress and done still goes to Alice, Bob only gets E_NOT_YOURS."""
    async with node_and_clients(store_url, transport, "alice-secret", "bob-secret") as (
            node, (alice, bob)):
        sent = 0
        for index in range(JOBS):
            job_id = f"job{index}"
            assign = await submitted(alice, node, job_id)
            steal: p.Message = p.Follow(job_id=job_id) if index % 2 else p.Submit(
                job_id=job_id, pools=["p"])
            finished = trio.Event()

            async def hammer(steal: p.Message = steal, finished: trio.Event = finished) -> None:
                nonlocal sent
                for _ in range(MAX_BURST):
                    if finished.is_set():
                        return
                    await send(bob, steal)
                    sent += 1
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hammer)
                await send(node, p.Accept(job_id=job_id, attempt=assign.attempt),
                           p.Progress(job_id=job_id, attempt=assign.attempt, data={"i": index}),
                           p.Result(job_id=job_id, attempt=assign.attempt, ok=True,
                                    output={"i": index}))
                await until_pong(node)  # the result is recorded: its done went out
                finished.set()
            got = await until_pong(alice)
            assert [type(m) for m in got] == [p.Progress, p.Done], got
            assert isinstance(got[1], p.Done) and got[1].output == {"i": index}
        stolen = await until_pong(bob)
        assert {(type(m), getattr(m, "code", None)) for m in stolen} == {(p.Error, "E_NOT_YOURS")}
        assert len(stolen) == sent


async def test_a_refused_follow_leaves_the_owners_subscription(
    store_url: str, transport: str,
) -> None:
    async with node_and_clients(store_url, transport, "alice-secret", "bob-secret") as (
            node, (alice, bob)):
        await submitted(alice, node, "j1")
        await send(bob, p.Follow(job_id="j1", ref="f"), p.Submit(job_id="j1", pools=["p"]))
        assert [(type(m), getattr(m, "code", None)) for m in await until_pong(bob)] == [
            (p.Error, "E_NOT_YOURS")] * 2
        await send(node, p.Progress(job_id="j1", attempt=1, data=1),
                   p.Result(job_id="j1", attempt=1, ok=True, output=2))
        assert (await expect(alice, p.Progress)).data == 1
        assert (await expect(alice, p.Done)).output == 2
        assert await until_pong(bob) == []


async def test_follow_answers_with_the_node_and_info_that_status_gives(
    store_url: str, transport: str,
) -> None:
    async with node_and_clients(store_url, transport, "alice-secret") as (node, (alice,)):
        await submitted(alice, node, "j1", priority=3)
        await send(node, p.Accept(job_id="j1", attempt=1))
        await until_pong(node)
        await send(alice, p.Status(job_id="j1", ref="s"), p.Follow(job_id="j1", ref="f"))
        status, followed = await expect(alice, p.Job), await expect(alice, p.Job)
        assert (followed.state, followed.node, followed.ref) == ("running", "n1", "f")
        assert followed.info == status.info and followed.info["priority"] == 3
        assert followed.info["pools"] == ["p"]


async def test_a_follow_whose_snapshot_read_fails_still_follows(
    transport: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with node_and_clients("memory://", transport, "alice-secret", "alice-secret") as (
            node, (first, second)):
        await submitted(first, node, "j1")

        async def unavailable(job_id: str) -> None:
            raise StoreUnavailable("down")

        monkeypatch.setattr(Queries, "job", lambda self, job_id: unavailable(job_id))
        await send(second, p.Follow(job_id="j1", ref="f"))
        followed = await expect(second, p.Job)
        assert (followed.state, followed.node, followed.ref) == ("assigned", None, "f")
        assert (await expect(first, p.Error)).code == p.E_DETACHED
        await send(node, p.Result(job_id="j1", attempt=1, ok=True, output=3))
        assert (await expect(second, p.Done)).output == 3


async def test_the_newest_follower_takes_the_job_and_the_one_before_is_told(
    store_url: str, transport: str,
) -> None:
    async with node_and_clients(store_url, transport, "alice-secret", "alice-secret") as (
            node, (first, second)):
        await submitted(first, node, "j1")
        await send(second, p.Follow(job_id="j1", ref="f"))
        assert (await expect(second, p.Job)).state == "assigned"
        detached = await expect(first, p.Error)
        assert (detached.code, detached.job_id, detached.ref) == (p.E_DETACHED, "j1", None)
        # a duplicate submit takes it back the same way
        await send(first, p.Submit(job_id="j1", pools=["p"], ref="again"))
        assert (await expect(first, p.Accepted)).duplicate
        assert (await expect(second, p.Error)).code == p.E_DETACHED
        await send(node, p.Result(job_id="j1", attempt=1, ok=True, output=5))
        assert (await expect(first, p.Done)).output == 5
        assert await until_pong(second) == []
        # once the job is done, a follow gets its done and detaches no one
        await send(second, p.Follow(job_id="j1", ref="late"))
        assert (await expect(second, p.Job)).state == "done"
        assert (await expect(second, p.Done)).output == 5
        assert await until_pong(first) == []


async def test_a_follow_on_another_instance_detaches_the_follower_here(transport: str) -> None:
    url = f"memory://follow-{uuid.uuid4().hex[:8]}"
    async with daemon(url) as a, daemon(url) as b:
        node = await node_of(a, transport)
        on_a = await wire(a, transport, "client", "alice-secret")
        on_b = await wire(b, transport, "client", "alice-secret")
        await submitted(on_a, node, "j1")
        await send(on_b, p.Follow(job_id="j1", ref="f"))
        await expect(on_b, p.Job)
        detached = await expect(on_a, p.Error)  # the detach came through a's inbox
        assert (detached.code, detached.job_id) == (p.E_DETACHED, "j1")
        await send(node, p.Result(job_id="j1", attempt=1, ok=True, output=6))
        assert (await expect(on_b, p.Done)).output == 6
        assert await until_pong(on_a) == []


# -- routing, unit level ------------------------------------------------------------------------


class FakeSession:
    def __init__(self, principal: str) -> None:
        self.principal = principal
        self.following: set[str] = set()
        self.sessions: set[str] = set()
        self.got: list[object] = []

    def deliver(self, delivery: object) -> None:
        self.got.append(delivery)

    def deliver_done(self, done: DoneDelivery) -> None:
        self.got.append(done)

    def detached(self, job_id: str) -> None:
        self.got.append(("detached", job_id))


def done(job_id: str, principal: str | None) -> DoneDelivery:
    return DoneDelivery(job_id=job_id, state="done", ok=True, output_json="1", error=None,
                        node="n1", attempts=1, timings={}, principal=principal)


def follower(routes: Routes[Any], job_id: str, session: FakeSession, follows: int = 0) -> None:
    candidate = routes.expect(job_id, session)
    routes.settle(job_id, candidate, follows)


def test_routing_drops_a_done_of_another_principal() -> None:
    routes: Routes[Any] = Routes()
    alice, bob = FakeSession("alice"), FakeSession("bob")
    follower(routes, "j1", alice)
    candidate = routes.expect("j1", bob)
    routes.route(done("j1", "mallory"))
    routes.route(ProgressDelivery(job_id="j1", attempt=1, data_json="1", principal="mallory"))
    assert alice.got == [] and candidate.held == []
    routes.settle("j1", candidate, None)  # bob's follow was refused
    assert routes.followers["j1"].session is alice
    routes.route(done("j1", "alice"))
    assert alice.got == [done("j1", "alice")] and bob.got == []
    assert routes.followers == {} and routes.candidates == {} and alice.following == set()


def test_a_candidate_of_the_owner_gets_what_came_during_its_script_after_its_reply() -> None:
    routes: Routes[Any] = Routes()
    alice = FakeSession("alice")
    candidate = routes.expect("j1", alice)
    routes.route(done("j1", "alice"))
    assert alice.got == []  # held until the reply went out
    routes.settle("j1", candidate, 2, done("j1", "alice"))  # the script saw it finished too
    assert alice.got == [done("j1", "alice")]  # once
    assert routes.followers == {}


def test_a_detach_orders_follows_by_their_count() -> None:
    routes: Routes[Any] = Routes()
    old, new = FakeSession("alice"), FakeSession("alice")
    follower(routes, "j1", old, follows=1)
    pending = routes.expect("j1", new)
    # another instance's follow (count 2) came before this one's reply (count 3): kept
    routes.detach(Detach(job_id="j1", principal="alice", follows=2))
    assert old.got == [("detached", "j1")]
    routes.settle("j1", pending, 3)
    routes.detach(Detach(job_id="j1", principal="bob", follows=9))  # not alice's: ignored
    assert new.got == [] and routes.followers["j1"].follows == 3
    # a follow elsewhere newer than one still in flight here: the one here is detached
    late = FakeSession("alice")
    pending = routes.expect("j1", late)
    routes.detach(Detach(job_id="j1", principal="alice", follows=5))
    assert new.got == [("detached", "j1")]
    routes.settle("j1", pending, 4)
    assert late.got == [("detached", "j1")] and "j1" not in routes.followers


def test_a_closed_connection_follows_nothing() -> None:
    routes: Routes[Any] = Routes()
    alice = FakeSession("alice")
    follower(routes, "j1", alice)
    follower(routes, "j2", alice)
    routes.forget(alice)
    assert routes.followers == {} and alice.following == set()




def ordered_done(job_id: str, principal: str, seq: int) -> DoneDelivery:
    return DoneDelivery(job_id=job_id, state="done", ok=True, output_json="1", error=None,
                        node="n1", attempts=1, timings={}, principal=principal,
                        session_id="s", seq=seq)


def test_a_sessions_results_go_to_its_follower_in_order_and_to_no_other_principal() -> None:
    routes: Routes[Any] = Routes()
    alice, bob, other = FakeSession("alice"), FakeSession("bob"), FakeSession("alice")
    routes.follow_session("s", bob)  # bob's own session "s"
    routes.expect("j0", alice)  # its submit still runs: the done is not held for it
    routes.follow_session("s", alice)
    routes.route(ordered_done("j0", "alice", 0))
    routes.expect_session("s", other)  # another connection of alice follows the session
    routes.route(ordered_done("j1", "alice", 1))
    assert other.got == []  # held until its reply went out
    routes.settle_session("s", other, followed=True)
    assert alice.got == [ordered_done("j0", "alice", 0)]
    assert other.got == [ordered_done("j1", "alice", 1)]
    assert bob.got == [] and alice.sessions == set() and other.sessions == {"s"}
    assert routes.forget(other) == ["s"] and routes.forget(bob) == ["s"]
    routes.expect_session("s", alice)
    routes.settle_session("s", alice, followed=False)  # refused: it follows nothing
    assert routes.sessions == {}
