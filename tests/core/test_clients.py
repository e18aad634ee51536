"""The clients view (client_open.lua, client_close.lua, the reaper) and the protocol version a
node's registration keeps, on the embedded store and a real redis-server."""

from __future__ import annotations

import pytest
import trio

from schedd import errors
from schedd.core import Queries
from schedd.store.base import Store
from tests.core.helpers import make_core


async def test_open_lists_and_close_removes(store: Store) -> None:
    a, _ = await make_core(store, "A")
    b, _ = await make_core(store, "B")
    q = Queries(store, a.keys)
    since = await a.client_open("c1", principal="token:aa", peer="10.0.0.1:5000", protocol=1,
                                name="web")
    await b.client_open("c2", principal="token:bb", peer="10.0.0.2:6000", protocol=1, name=None)
    await a.client_open("c3", principal="token:bb", peer="10.0.0.3:7000", protocol=1, name="x")
    listed = await q.clients()
    assert sorted((c.instance, c.principal, c.peer) for c in listed) == [
        ("A", "token:aa", "10.0.0.1:5000"),
        ("A", "token:bb", "10.0.0.3:7000"),
        ("B", "token:bb", "10.0.0.2:6000"),
    ]
    assert [c.connected_ms for c in listed] == sorted(c.connected_ms for c in listed)
    (first,) = [c for c in listed if c.peer == "10.0.0.1:5000"]
    assert (first.protocol, first.name, first.connected_ms) == (1, "web", since)
    assert since >= int((await store.execute("TIME"))[0]) * 1000 - 60_000
    # one principal's view
    assert sorted(c.peer for c in await q.clients("token:bb")) == [
        "10.0.0.2:6000", "10.0.0.3:7000"]
    assert await q.clients("token:nobody") == []
    answer = await q.answer("clients", principal="token:aa")
    assert answer == {"clients": [{"instance": "A", "principal": "token:aa",
                                   "peer": "10.0.0.1:5000", "protocol": 1, "name": "web",
                                   "connected_ms": since}]}
    assert await a.client_close("c1") is True
    assert await a.client_close("c1") is False  # already gone: nothing changes
    assert await b.client_close("c3") is False  # another instance's connection: not B's list
    assert sorted(c.peer for c in await q.clients()) == ["10.0.0.2:6000", "10.0.0.3:7000"]


async def test_open_refuses_bad_arguments(store: Store) -> None:
    a, _ = await make_core(store, "A")
    keys = [a.keys.clients("A"), a.keys.instances]
    with pytest.raises(errors.BadArgument, match="connection id"):
        await a.scripts.call(store, "client_open", keys, ["A", "", "{}", 1000])
    with pytest.raises(errors.BadArgument, match="JSON object"):
        await a.scripts.call(store, "client_open", keys, ["A", "c1", "[1]", 1000])
    assert await Queries(store, a.keys).clients() == []


async def test_a_dead_instances_clients_vanish_then_are_reaped(store: Store) -> None:
    a, _ = await make_core(store, "A", instance_ttl=0.05)
    b, _ = await make_core(store, "B", instance_ttl=60)
    q = Queries(store, a.keys)
    await a.client_open("c1", principal="p", peer="1.1.1.1:1", protocol=1, name=None)
    await b.client_open("c2", principal="p", peer="2.2.2.2:2", protocol=1, name=None)
    # client_open made the instance present at once (before any heartbeat flush)
    assert set(await q.instances()) == {"A", "B"}
    await trio.sleep(0.1)  # A's presence expires: it crashed
    assert [c.instance for c in await q.clients()] == ["B"]  # skipped before any reap
    assert await store.execute("EXISTS", a.keys.clients("A")) == 1
    await b.reap()
    assert await store.execute("EXISTS", a.keys.clients("A")) == 0
    assert await store.execute("EXISTS", a.keys.clients("B")) == 1
    assert [c.instance for c in await q.clients()] == ["B"]


async def test_open_never_moves_presence_back(store: Store) -> None:
    a, _ = await make_core(store, "A", instance_ttl=60)
    await a.heartbeat_batch([])
    (long,) = (await Queries(store, a.keys).instances()).values()
    short, _ = await make_core(store, "A", instance_ttl=0.05)
    await short.client_open("c1", principal="p", peer="1.1.1.1:1", protocol=1, name=None)
    assert (await Queries(store, a.keys).instances())["A"] == long


async def test_node_records_the_protocol_its_connection_spoke(store: Store) -> None:
    core, _ = await make_core(store)
    q = Queries(store, core.keys)
    await core.register_node(node_id="n1", capacity=1, pools=["p"], protocol=1)
    await core.register_node(node_id="n2", capacity=1, pools=["p"])
    by_id = {n.node_id: n for n in await q.nodes()}
    assert (by_id["n1"].protocol, by_id["n2"].protocol) == (1, 0)
    assert {n["node_id"]: n["protocol"] for n in (await q.answer("nodes"))["nodes"]} == {
        "n1": 1, "n2": 0}
    with pytest.raises(errors.BadArgument, match="protocol version"):
        await core.scripts.call(
            store, "node_register", [core.keys.node("n"), core.keys.nodes, core.keys.alive],
            ["A", "n", 1, "[]", "{}", "{}", 1000, "p", "1.5"],
        )
