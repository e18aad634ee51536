"""``submit.cost`` and fair share weights over both transports, on both stores: a weighted job
reaches a node it fits, one too big is refused (``E_TOO_BIG``), a bad ``cost`` is refused
(``E_BAD_FIELD``), and a token's configured weight gives its principal its share."""

from __future__ import annotations

from typing import Any

import pytest

from schedd import protocol as p
from schedd.principals import token_principal
from schedd.testing import DaemonHarness, Peer
from tests.daemon.harness import running_daemon, wire_channels

TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": '["node-secret"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": '["alice-secret", "bob-secret"]',
}


async def wire_client(d: DaemonHarness, transport: str, token: str) -> Peer:
    """A client connected over a real socket of the transport, past its hello."""
    daemon_side, ours = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    client = Peer(ours)  # type: ignore[arg-type]
    await client.send(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=token))
    await client.expect(p.Welcome)
    return client


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_cost_over_the_wire(store_url: str, transport: str) -> None:
    async with running_daemon(store_url, **TOKENS) as d:
        node, _ = await d.node("p", capacity=2, node_id="n1", token="node-secret")
        client = await wire_client(d, transport, "alice-secret")
        await client.send({"type": "submit", "pools": ["p"], "cost": 2, "ref": "big"})
        assert (await client.expect(p.Accepted)).state == "assigned"
        assign = await node.expect(p.Assign)
        # the node is full: a job of cost 1 waits
        await client.send(p.Submit(pools=["p"], ref="small"))
        assert (await client.expect(p.Accepted)).state == "queued"
        await client.send({"type": "submit", "pools": ["p"], "cost": 3, "ref": "huge"})
        refused = await client.expect(p.Error)
        assert (refused.code, refused.ref) == ("E_TOO_BIG", "huge")
        for bad in (0, -1, 1.5, "2", None, 4097, True):
            await client.send({"type": "submit", "pools": ["p"], "cost": bad, "ref": "bad"})
            error = await client.expect(p.Error)
            assert error.code == p.E_BAD_FIELD, bad
            assert "cost" in error.message
        await node.send(p.Result(job_id=assign.job_id, attempt=1, ok=True))
        await client.expect(p.Done)
        assert (await node.expect(p.Assign)).job_id != assign.job_id


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_token_s_weight_gives_its_principal_its_share(
    store_url: str, transport: str
) -> None:
    toml = f'[tenants.weights]\n"{token_principal("alice-secret")}" = 3\n'
    async with running_daemon(store_url, toml, **TOKENS) as d:
        node, _ = await d.node("p", capacity=1, node_id="n1", token="node-secret")
        alice = await wire_client(d, transport, "alice-secret")
        bob = await wire_client(d, transport, "bob-secret")
        owner: dict[str, str] = {}

        async def submit(peer: Peer, name: str, count: int) -> None:
            for _ in range(count):
                await peer.send(p.Submit(pools=["p"]))
                accepted: Any = await peer.expect(p.Accepted)
                owner[accepted.job_id] = name

        await submit(alice, "alice", 13)  # the first runs
        await submit(bob, "bob", 4)
        served = []
        for _ in range(13):
            assign = await node.expect(p.Assign)
            served.append(owner[assign.job_id])
            await node.send(p.Result(job_id=assign.job_id, attempt=1, ok=True))
        assert served[0] == "alice"
        assert served[1:13].count("alice") == 9 and served[1:13].count("bob") == 3
