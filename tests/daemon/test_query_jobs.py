"""``query`` ``jobs`` over both transports: a client lists its own principal's jobs only, the
filters narrow them, hostile filters get specific errors; ``status`` carries the attempts."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from schedd import protocol as p
from schedd.core_hooks import token_principal
from schedd.transport import StreamChannel, WebSocketChannel
from tests.daemon.harness import Daemon, running_daemon, wire_channels

TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": '["node-secret"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": '["alice-secret", "bob-secret"]',
}

Wire = StreamChannel | WebSocketChannel


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wire(d: Daemon, transport: str, token: str) -> Wire:
    daemon_side, peer = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    await peer.send(p.encode(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=token)))
    assert isinstance(p.decode(await peer.receive()), p.Welcome)
    return peer


async def ask(peer: Wire, message: p.Message | dict[str, Any]) -> p.Message:
    data = p.encode(message) if not isinstance(message, dict) else orjson.dumps(message)
    await peer.send(data)
    with trio.fail_after(10):
        return p.decode(await peer.receive())


async def test_a_client_lists_its_own_jobs_with_filters(store_url: str, transport: str) -> None:
    async with running_daemon(store_url, **TOKENS) as d:
        node, _ = await d.node("p", node_id="n1", capacity=5, token="node-secret")
        alice = await wire(d, transport, "alice-secret")
        bob = await wire(d, transport, "bob-secret")
        for job_id, who in (("a1", alice), ("b1", bob), ("a2", alice)):
            assert isinstance(await ask(who, p.Submit(job_id=job_id, pools=["p"])), p.Accepted)
        first = await node.expect(p.Assign)
        await node.send(p.Reject(job_id=first.job_id, attempt=1, reason="not today"))

        answer = await ask(alice, p.Query(what="jobs", ref="q"))
        assert isinstance(answer, p.Answer) and answer.ref == "q"
        assert [j["job_id"] for j in answer.data["jobs"]] == ["a2", "a1"]
        assert {j["principal"] for j in answer.data["jobs"]} == {token_principal("alice-secret")}
        answer = await ask(alice, p.Query(what="jobs", limit=1))
        assert isinstance(answer, p.Answer) and len(answer.data["jobs"]) == 1
        more = await ask(alice, p.Query(what="jobs", limit=1, cursor=answer.data["cursor"]))
        assert isinstance(more, p.Answer) and [j["job_id"] for j in more.data["jobs"]] == ["a1"]
        mine = await ask(alice, p.Query(what="jobs", principal=token_principal("alice-secret"),
                                        state="assigned", node="n1", pool="p"))
        assert isinstance(mine, p.Answer) and {j["job_id"] for j in mine.data["jobs"]} == {
            "a1", "a2"} - ({first.job_id} if first.job_id.startswith("a") else set())
        theirs = await ask(alice, p.Query(what="jobs", principal=token_principal("bob-secret"),
                                          ref="x"))
        assert isinstance(theirs, p.Error) and theirs.code == "E_NOT_YOURS"
        assert theirs.ref == "x"

        status = await ask(alice if first.job_id.startswith("a") else bob,
                           p.Status(job_id=first.job_id))
        assert isinstance(status, p.Job)
        attempts = status.info["attempts"]
        assert attempts[0]["outcome"] == "rejected" and "not today" in attempts[0]["reason"]
        assert status.info["payload_bytes"] == len(b"null")


async def test_hostile_job_filters_get_bad_field(store_url: str, transport: str) -> None:
    async with running_daemon(store_url, **TOKENS) as d:
        alice = await wire(d, transport, "alice-secret")
        for bad, field in (
            ({"limit": 100000}, "limit"),
            ({"limit": 0}, "limit"),
            ({"state": "exploded"}, "state"),
            ({"since": -5}, "since"),
            ({"since": "10m"}, "since"),
            ({"since": 10, "until": 5}, "until"),
            ({"cursor": "DROP TABLE"}, "cursor"),
            ({"node": ""}, "node"),
        ):
            reply = await ask(alice, {"type": "query", "what": "jobs", "ref": "r", **bad})
            assert isinstance(reply, p.Error) and reply.code == "E_BAD_FIELD", bad
            assert field in reply.message
        reply = await ask(alice, {"type": "query", "what": "nodes", "state": "done"})
        assert isinstance(reply, p.Error) and reply.code == "E_BAD_FIELD"
        assert "what=jobs" in reply.message
