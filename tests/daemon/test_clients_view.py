"""The protocol version peers spoke, in the node list and in the clients view, as a client sees
them over the wire: each principal sees only its own connections; a closed connection leaves."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.errors import StoreUnavailable
from schedd.principals import token_principal
from tests.daemon.harness import Daemon, Peer, channel_pair, running_daemon

TOKENS = '[auth]\nclient_tokens = ["alice-token", "bob-token"]\nnode_tokens = ["node-token"]\n'


async def named(d: Daemon, name: str, token: str | None = None) -> Peer:
    """A client connection whose hello gives ``name`` (the harness's channels all show the same
    peer address)."""
    ours, theirs = channel_pair()
    d.nursery.start_soon(d.daemon.serve_channel, theirs)
    conn = Peer(ours)
    await conn.send(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=token, name=name))
    await conn.expect(p.Welcome)
    return conn


async def clients(conn: Any) -> list[dict[str, Any]]:
    await conn.send(p.Query(what="clients", ref="q"))
    answer = await conn.expect(p.Answer)
    assert (answer.what, answer.ref) == ("clients", "q")
    listed: list[dict[str, Any]] = answer.data["clients"]
    return listed


async def test_each_principal_sees_only_its_own_clients(store_url: str) -> None:
    async with running_daemon(store_url, TOKENS) as d:
        alice = await named(d, "alice-1", "alice-token")
        await named(d, "bob-1", "bob-token")
        alice_2 = await named(d, "alice-2", "alice-token")
        await d.node("p", token="node-token")  # nodes are not clients
        mine = await clients(alice)
        assert sorted(c["name"] for c in mine) == ["alice-1", "alice-2"]
        for entry in mine:
            assert set(entry) == {"instance", "principal", "peer", "protocol", "name",
                                  "connected_ms"}
            assert entry["principal"] == token_principal("alice-token")
            assert (entry["instance"], entry["protocol"]) == (d.app.instance, p.PROTOCOL_VERSION)
            assert "alice-token" not in str(entry)  # the principal, never the token
            assert entry["peer"]
        assert sorted(c["name"] for c in await clients(alice_2)) == ["alice-1", "alice-2"]
        # the daemon's own read sees every principal's
        everyone = await d.app.queries.clients()
        assert sorted(c.name or "" for c in everyone) == ["alice-1", "alice-2", "bob-1"]


async def test_a_closed_connection_leaves_the_view(store_url: str) -> None:
    async with running_daemon(store_url) as d:
        watcher = await named(d, "watcher")
        leaving = await named(d, "leaving")
        assert sorted(c["name"] for c in await clients(watcher)) == ["leaving", "watcher"]
        await leaving.channel.aclose()
        with trio.fail_after(5):
            while len(await clients(watcher)) != 1:
                await trio.sleep(0.01)
        assert [c["name"] for c in await clients(watcher)] == ["watcher"]


async def test_the_client_list_is_emptied_when_the_daemon_stops(store_url: str) -> None:
    async with running_daemon(store_url) as d:
        await named(d, "one")
        await named(d, "two")
        queries = d.app.queries
        assert len(await queries.clients()) == 2
    # running_daemon's store is closed now; the shared redis-server (or the embedded store of
    # this test alone) would show nothing left by a clean stop
    if store_url != "memory://":
        async with running_daemon(store_url) as again:
            assert await again.app.queries.clients() == []


async def test_nodes_answer_shows_the_protocol_the_node_spoke(store_url: str) -> None:
    async with running_daemon(store_url) as d:
        await d.node("p", node_id="n1")
        client = await d.client()
        await client.send(p.Query(what="nodes"))
        answer = await client.expect(p.Answer)
        [node] = answer.data["nodes"]
        assert (node["node_id"], node["protocol"]) == ("n1", p.PROTOCOL_VERSION)


async def test_a_store_failure_does_not_refuse_the_client(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def unavailable(*_: Any, **__: Any) -> int:
        raise StoreUnavailable("connection refused")

    async with running_daemon() as d:
        monkeypatch.setattr(d.app.core, "client_open", unavailable)
        monkeypatch.setattr(d.app.core, "client_close", unavailable)
        with caplog.at_level(logging.WARNING, logger="schedd.session"):
            client = await d.client()
            await client.send(p.Ping(ref="x"))
            assert (await client.expect(p.Pong)).ref == "x"  # served all the same
            await client.channel.aclose()
            with trio.fail_after(5):
                while not any("stays in the clients view" in r.message for r in caplog.records):
                    await trio.sleep(0.01)
    assert any("is not in the clients view" in r.message for r in caplog.records)


async def test_query_clients_is_refused_to_nodes() -> None:
    async with running_daemon() as d:
        node, _ = await d.node("p")
        await node.send(p.Query(what="clients", ref="q"))
        error = await node.expect(p.Error)
        assert error.ref == "q" and error.code == p.E_ROLE
