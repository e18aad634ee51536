"""Ordered sessions over the wire (docs/protocol.md, "Ordered sessions"), on both transports and
stores: results in seq order, skipped gaps, duplicate seqs, follow_session after a reconnect
(here or on another instance) and sessions named per principal."""

from __future__ import annotations

import uuid

import trio

from schedd import protocol as p
from schedd.principals import token_principal
from schedd.store.keys import order_id
from tests.daemon.harness import Daemon
from tests.daemon.test_follow import (
    Wire,
    daemon,
    expect,
    node_of,
    send,
    transport,
    until_pong,
    wire,
)

__all__ = ["transport"]  # the fixture, used by name

ALICE = token_principal("alice-secret")


async def _submit_all(client: Wire, node: Wire, seqs: list[int], session: str = "call",
                      prefix: str = "", **kw: object) -> dict[int, p.Assign]:
    """Submit a job per seq (ids ``<prefix><session>-<seq>``); the node's assign of each, by
    seq."""
    for seq in seqs:
        job_id = f"{prefix}{session}-{seq}"
        await send(client, p.Submit(job_id=job_id, pools=["p"], session_id=session,
                                    seq=seq, **kw))  # type: ignore[arg-type]
        assert (await expect(client, p.Accepted)).job_id == job_id
    assigns: dict[int, p.Assign] = {}
    for _ in seqs:
        assign = await expect(node, p.Assign)
        assigns[int(assign.job_id.rsplit("-", 1)[1])] = assign
    return assigns


async def _result(node: Wire, assign: p.Assign, ok: bool = True) -> None:
    await send(node, p.Result(job_id=assign.job_id, attempt=assign.attempt, ok=ok,
                              output=assign.job_id,
                              error=None if ok else p.ErrorInfo(code="E_MODEL", message="no")))


def _order(messages: list[p.Message]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for m in messages:
        if isinstance(m, p.Done):
            assert m.seq is not None
            out.append(("done", m.seq))
        elif isinstance(m, p.Skipped):
            out.append(("skipped", m.from_seq))
    return out


async def test_out_of_order_results_reach_the_client_in_seq_order(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        node = await node_of(d, transport, capacity=4)
        client = await wire(d, transport, "client", "alice-secret")
        assigns = await _submit_all(client, node, [0, 1, 2, 3])
        for seq in (3, 1, 2):
            await _result(node, assigns[seq])
        await until_pong(node)
        assert _order(await until_pong(client)) == []  # all wait for seq 0
        await _result(node, assigns[0], ok=False)  # a failed job is delivered in its turn
        got = [await expect(client, p.Done) for _ in range(4)]
        assert [(m.seq, m.state, m.session_id) for m in got] == [
            (0, "failed", "call"), (1, "done", "call"), (2, "done", "call"), (3, "done", "call")]


async def test_a_gap_is_reported_skipped_after_its_timeout(store_url: str, transport: str) -> None:
    async with daemon(store_url, SCHEDD_REAPER__INTERVAL="0.02") as d:
        node = await node_of(d, transport, capacity=4)
        client = await wire(d, transport, "client", "alice-secret")
        assigns = await _submit_all(client, node, [0, 1, 2], gap_timeout=0.05)
        await _result(node, assigns[2])
        await _result(node, assigns[0])
        assert (await expect(client, p.Done)).seq == 0
        skipped = await expect(client, p.Skipped)  # the reaper, after the gap timeout
        assert (skipped.session_id, skipped.from_seq, skipped.to_seq) == ("call", 1, 1)
        assert (await expect(client, p.Done)).seq == 2
        await _result(node, assigns[1])  # too late for the session
        assert _order(await until_pong(client)) == []


async def test_a_duplicate_seq_is_refused_and_the_same_job_is_idempotent(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        node = await node_of(d, transport, capacity=4)
        client = await wire(d, transport, "client", "alice-secret")
        await _submit_all(client, node, [0])
        await send(client, p.Submit(job_id="other", pools=["p"], session_id="call", seq=0,
                                    ref="dup"))
        error = await expect(client, p.Error)
        assert (error.code, error.ref) == ("E_DUPLICATE_SEQ", "dup")
        await send(client, p.Submit(job_id="call-0", pools=["p"], session_id="call", seq=0))
        assert (await expect(client, p.Accepted)).duplicate
        await client.send(b'{"type":"submit","pools":["p"],"seq":1,"ref":"alone"}')
        error = await expect(client, p.Error)  # a seq names its session
        assert (error.code, error.ref) == (p.E_BAD_FIELD, None)
        assert "@ $.seq" in error.message


async def test_another_principal_cannot_see_or_take_a_session(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        node = await node_of(d, transport, capacity=4)
        alice = await wire(d, transport, "client", "alice-secret")
        bob = await wire(d, transport, "client", "bob-secret")
        a = await _submit_all(alice, node, [0])
        await send(bob, p.FollowSession(session_id="call", ref="steal"))
        error = await expect(bob, p.Error)
        assert (error.code, error.ref) == ("E_NO_SESSION", "steal")
        b = await _submit_all(bob, node, [0], prefix="bob-")  # the same name: bob's own session
        await _result(node, b[0])
        assert (await expect(bob, p.Done)).job_id == "bob-call-0"
        assert _order(await until_pong(alice)) == []
        await _result(node, a[0])
        assert (await expect(alice, p.Done)).seq == 0
        assert _order(await until_pong(bob)) == []


async def _left(d: Daemon, principal: str, session_id: str) -> None:
    """Wait until no instance has the session (its follower's connection closed)."""
    key = d.app.core.keys.order(order_id(principal, session_id))

    async def check() -> bool:
        return await d.app.core.store.execute("HGET", key, "client") in (b"", "")

    with trio.fail_after(10):
        while not await check():
            await trio.sleep(0.005)


async def test_results_wait_for_the_reconnecting_client(store_url: str, transport: str) -> None:
    async with daemon(store_url) as d:
        node = await node_of(d, transport, capacity=4)
        first = await wire(d, transport, "client", "alice-secret")
        assigns = await _submit_all(first, node, [0, 1, 2])
        await _result(node, assigns[0])
        assert (await expect(first, p.Done)).seq == 0
        await first.aclose()
        await _left(d, ALICE, "call")  # the session's results now wait in the store
        await _result(node, assigns[2])
        await _result(node, assigns[1])
        await until_pong(node)
        second = await wire(d, transport, "client", "alice-secret")
        await send(second, p.FollowSession(session_id="call", ref="back"))
        session = await expect(second, p.Session)
        assert (session.session_id, session.next_seq, session.held, session.ref) == (
            "call", 3, 0, "back")
        assert [(await expect(second, p.Done)).seq for _ in range(2)] == [1, 2]


async def test_an_instance_killed_while_results_are_held(store_url: str, transport: str) -> None:
    """The client's instance dies while the session's results wait for a missing seq: the
    client reconnects to another instance, follows the session and gets them all, in order."""
    url = f"memory://order-{uuid.uuid4().hex[:8]}" if store_url.startswith("memory") \
        else store_url
    async with daemon(url, SCHEDD_SCHEDD__INSTANCE="b") as b:
        node = await node_of(b, transport, capacity=4)
        async with daemon(url, SCHEDD_SCHEDD__INSTANCE="a") as a:
            on_a = await wire(a, transport, "client", "alice-secret")
            assigns = await _submit_all(on_a, node, [0, 1, 2])
            await _result(node, assigns[2])
            await _result(node, assigns[1])
            await until_pong(node)
            # instance a is killed here (its task cancelled: no goodbye to the store)
        await b.app.core.store.execute("ZREM", b.app.core.keys.instances, "a")  # expired
        await _result(node, assigns[0])
        await until_pong(node)
        on_b = await wire(b, transport, "client", "alice-secret")
        await send(on_b, p.FollowSession(session_id="call"))
        assert (await expect(on_b, p.Session)).next_seq == 3
        assert [(await expect(on_b, p.Done)).seq for _ in range(3)] == [0, 1, 2]
        assert _order(await until_pong(on_b)) == []
