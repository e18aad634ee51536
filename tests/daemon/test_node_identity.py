"""A node id belongs to the principal that registered it: another node token cannot take it over
(``E_IDENTITY``), ``[auth] node_id_patterns`` limits the ids a token may use, and the same
principal registering again (a reconnect) replaces its old connection, which is told
``E_STALE_EPOCH`` before it closes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.core import AssignDelivery
from schedd.core_hooks import token_principal
from schedd.errors import NotYourNode
from schedd.sdk.connect import open_channel
from tests.daemon.harness import Daemon, Peer, running_daemon

NODE_A, NODE_B, CLIENT = "node-a-secret", "node-b-secret", "client-secret"
TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": f'["{NODE_A}", "{NODE_B}"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": f'["{CLIENT}"]',
}
WIRE = {
    **TOKENS,
    "SCHEDD_PLUGINS__ENABLED": '["transport_ws", "transport_tcp"]',
    "SCHEDD_PLUGINS__TRANSPORT_WS__LISTEN": "127.0.0.1:0",
    "SCHEDD_PLUGINS__TRANSPORT_TCP__LISTEN": "127.0.0.1:0",
}
PLUGIN = {"tcp": "transport_tcp", "ws": "transport_ws"}


class Wire:
    """Connections to a running daemon over one real transport."""

    def __init__(self, d: Daemon, url: str, stack: AsyncExitStack) -> None:
        self.d, self.url, self.stack = d, url, stack

    async def connect(self, role: str, token: str) -> Peer:
        peer = Peer(await self.stack.enter_async_context(open_channel(self.url)))  # type: ignore[arg-type]
        await peer.send(p.Hello(role=role, version=p.PROTOCOL_VERSION, token=token))  # type: ignore[arg-type]
        await peer.expect(p.Welcome)
        return peer

    async def node(self, token: str, node_id: str | None, **register: Any) -> Peer:
        peer = await self.connect("node", token)
        await peer.send(p.Register(node_id=node_id, capacity=1, pools=["p"], **register))
        return peer


@asynccontextmanager
async def wire(transport: str, tmp_path: Path, **env: str) -> AsyncIterator[Wire]:
    with trio.fail_after(20):
        async with running_daemon(tmp_path=tmp_path, **{**WIRE, **env}) as d, \
                AsyncExitStack() as stack:  # fmt: skip
            yield Wire(d, d.app.listeners[PLUGIN[transport]], stack)


async def pong(peer: Peer, ref: str) -> list[p.Message]:
    """What the daemon sends before the pong to ``ref`` (its answers to earlier messages)."""
    await peer.send(p.Ping(ref=ref))
    seen: list[p.Message] = []
    while not isinstance(message := await peer.recv(), p.Pong) or message.ref != ref:
        seen.append(message)
    return seen


async def running_job(w: Wire, node: Peer, job_id: str = "j1") -> Peer:
    """A client whose job ``job_id`` the node has accepted."""
    client = await w.connect("client", CLIENT)
    await client.send(p.Submit(job_id=job_id, pools=["p"], payload="work"))
    await client.expect(p.Accepted)
    assign = await node.expect(p.Assign)
    await node.send(p.Accept(job_id=assign.job_id, attempt=assign.attempt))
    return client


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_another_principal_cannot_take_a_connected_nodes_id(
    transport: str, tmp_path: Path
) -> None:
    async with wire(transport, tmp_path) as w:
        owner = await w.node(NODE_A, "n1")
        await owner.expect(p.Registered)
        session = w.d.app.nodes["n1"]
        client = await running_job(w, owner)
        hijacker = await w.node(NODE_B, "n1", running=[p.RunningJob(job_id="j1", attempt=1)],
                                ref="take")
        refused = await hijacker.expect(p.Error)
        assert (refused.code, refused.ref) == (p.E_IDENTITY, "take")
        assert "another principal" in refused.message
        # refused, the hijacker speaks for nothing: every node message is out of turn
        for message in (p.Result(job_id="j1", attempt=1, ok=True, output="forged", ref="r"),
                        p.Heartbeat(inflight=1, running=["j1"], load=0.0, ref="h"),
                        p.Unavailable(service="s", ttl=60, ref="u"),
                        p.Drain(reason="mine", ref="d")):
            await hijacker.send(message)
            error = await hijacker.expect(p.Error)
            assert (error.code, error.ref) == (p.E_ROLE, message.ref)
        # the owner kept its connection, its registration and its job; its result is the one
        assert w.d.app.nodes["n1"] is session and session.node_id == "n1"
        assert await pong(owner, "still-here") == []
        await owner.send(p.Result(job_id="j1", attempt=1, ok=True, output="real"))
        done = await client.expect(p.Done)
        assert (done.output, done.node) == ("real", "n1")


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_an_offline_nodes_id_stays_its_principals_while_retained(
    transport: str, tmp_path: Path
) -> None:
    async with wire(transport, tmp_path, SCHEDD_NODES__DISCONNECT_GRACE="0") as w:
        owner = await w.node(NODE_A, "n1")
        await owner.expect(p.Registered)
        await owner.channel.aclose()
        queries = w.d.app.queries
        states: list[str] = []

        async def offline() -> None:
            while "offline" not in states:
                states[:] = [n.state for n in await queries.nodes() if n.node_id == "n1"]
                await trio.sleep(0.01)

        await offline()
        hijacker = await w.node(NODE_B, "n1", ref="take")
        assert (await hijacker.expect(p.Error)).code == p.E_IDENTITY
        assert "n1" not in w.d.app.nodes
        back = await w.node(NODE_A, "n1", ref="back")
        assert (await back.expect(p.Registered)).ref == "back"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_reconnect_of_the_same_principal_replaces_the_old_connection(
    transport: str, tmp_path: Path
) -> None:
    async with wire(transport, tmp_path) as w:
        old = await w.node(NODE_A, "n1")
        first = await old.expect(p.Registered)
        client = await running_job(w, old)
        new = await w.node(NODE_A, "n1", running=[p.RunningJob(job_id="j1", attempt=1)])
        assert (await new.expect(p.Registered)).epoch > first.epoch
        stale = await old.expect(p.Error)
        assert stale.code == "E_STALE_EPOCH" and "registered again" in stale.message
        assert await old.closed()
        await new.send(p.Result(job_id="j1", attempt=1, ok=True, output="after reconnect"))
        assert (await client.expect(p.Done)).output == "after reconnect"


async def test_a_registration_the_store_refuses_leaves_the_nodes_connection_in_place(
    tmp_path: Path,
) -> None:
    """Another principal took the id in the store (the store lost the owner's registration):
    the owner's second connection is refused and its first keeps the routing, and with it what
    was delivered for the node while the refused call ran."""
    async with running_daemon(tmp_path=tmp_path, **TOKENS) as d:
        first, _ = await d.node("p", node_id="n1", token=NODE_A)
        session = d.app.nodes["n1"]
        key = d.app.core.keys.node("n1")
        await d.app.store.execute("HSET", key, "principal", token_principal(NODE_B))
        second = await d.connect("node", NODE_A)
        await second.send(p.Register(node_id="n1", capacity=1, pools=["p"], ref="again"))
        refused = await second.expect(p.Error)
        assert (refused.code, refused.ref) == (p.E_IDENTITY, "again")
        assert d.app.nodes["n1"] is session
        assert await pong(first, "kept") == []
        # a delivery that arrives while a refused registration runs goes to the node's connection
        real = d.app.core.register_node

        async def refused_after_a_delivery(**kwargs: Any) -> Any:
            d.app.core.on_delivery(AssignDelivery(node_id="n1", job_id="jx", attempt=1,
                                                  payload_json="1", session_id=None,
                                                  deadline_ms=0, epoch=0))
            raise NotYourNode("node n1 is registered by another principal")

        d.app.core.register_node = refused_after_a_delivery  # type: ignore[method-assign]
        third = await d.connect("node", NODE_A)
        await third.send(p.Register(node_id="n1", capacity=1, pools=["p"], ref="third"))
        assert (await third.expect(p.Error)).code == p.E_IDENTITY
        assert (await first.expect(p.Assign)).job_id == "jx"
        assert await pong(third, "nothing-more") == []
        d.app.core.register_node = real  # type: ignore[method-assign]


async def test_another_principal_on_another_instance_is_refused_by_the_store(
    tmp_path: Path,
) -> None:
    store = "memory://identity-two-instances"
    async with running_daemon(store, tmp_path=tmp_path, SCHEDD_SCHEDD__INSTANCE="one",
                              **TOKENS) as one, \
            running_daemon(store, tmp_path=tmp_path, SCHEDD_SCHEDD__INSTANCE="two",
                           **TOKENS) as two:  # fmt: skip
        owner, reg = await one.node("p", node_id="n1", token=NODE_A)
        hijacker = await two.connect("node", NODE_B)
        await hijacker.send(p.Register(node_id="n1", capacity=1, pools=["p"], ref="take"))
        assert (await hijacker.expect(p.Error)).code == p.E_IDENTITY
        assert "n1" not in two.app.nodes
        record = await one.app.store.execute("HMGET", one.app.core.keys.node("n1"), "owner",
                                             "epoch")
        assert record == [b"one", str(reg.epoch).encode()]
        assert await pong(owner, "kept") == []


PATTERNS = f"""
[auth]
node_tokens = ["{NODE_A}", "{NODE_B}"]
client_tokens = ["{CLIENT}"]

[auth.node_id_patterns]
"{token_principal(NODE_A)}" = ["gpu-*", "spare-?"]
"""


async def register(d: Daemon, token: str, node_id: str | None) -> p.Message:
    conn = await d.connect("node", token)
    await conn.send(p.Register(node_id=node_id, capacity=1, pools=["p"]))
    return await conn.recv()


async def test_node_id_patterns_limit_the_ids_a_token_may_register(tmp_path: Path) -> None:
    async with running_daemon(toml=PATTERNS, tmp_path=tmp_path) as d:
        for allowed in ("gpu-1", "spare-7"):
            assert isinstance(await register(d, NODE_A, allowed), p.Registered)
        for refused in ("cpu-1", "spare-10", "GPU-1"):
            answer = await register(d, NODE_A, refused)
            assert isinstance(answer, p.Error) and answer.code == p.E_IDENTITY
            assert f"may not register node {refused}" in answer.message
        chosen = await register(d, NODE_A, None)  # the generated id does not match
        assert isinstance(chosen, p.Error) and chosen.code == p.E_IDENTITY
        assert "send a node_id" in chosen.message
        # a principal without an entry may register any id, a generated one too
        assert isinstance(await register(d, NODE_B, "cpu-1"), p.Registered)
        assert isinstance(await register(d, NODE_B, None), p.Registered)
        assert d.app.nodes["cpu-1"].principal == token_principal(NODE_B)


async def test_a_generated_node_id_is_given_when_the_patterns_allow_it(tmp_path: Path) -> None:
    toml = PATTERNS.replace('"gpu-*", "spare-?"', '"node-*"')
    async with running_daemon(toml=toml, tmp_path=tmp_path) as d:
        answer = await register(d, NODE_A, None)
        assert isinstance(answer, p.Registered) and answer.node_id.startswith("node-")


async def test_node_id_patterns_are_reloaded_on_sighup(tmp_path: Path) -> None:
    async with running_daemon(toml=PATTERNS, tmp_path=tmp_path) as d:
        assert isinstance(await register(d, NODE_B, "cpu-1"), p.Registered)
        assert d.app.config_path is not None
        d.app.config_path.write_text(PATTERNS + f'"{token_principal(NODE_B)}" = ["cpu-2"]\n')
        d.app.reload()
        answer = await register(d, NODE_B, "cpu-3")
        assert isinstance(answer, p.Error) and answer.code == p.E_IDENTITY
        assert isinstance(await register(d, NODE_B, "cpu-2"), p.Registered)


async def test_a_refused_connection_may_register_an_id_it_may_use(tmp_path: Path) -> None:
    async with running_daemon(toml=PATTERNS, tmp_path=tmp_path) as d:
        conn = await d.connect("node", NODE_A)
        await conn.send(p.Register(node_id="cpu-1", capacity=1, pools=["p"], ref="no"))
        assert (await conn.expect(p.Error)).code == p.E_IDENTITY
        await conn.send(p.Register(node_id="gpu-1", capacity=1, pools=["p"], ref="yes"))
        assert (await conn.expect(p.Registered)).ref == "yes"
        assert d.app.nodes["gpu-1"].principal == token_principal(NODE_A)
