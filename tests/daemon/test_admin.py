"""Operator actions over the wire (``admin``): an admin token's connection may act, any other
gets E_FORBIDDEN and changes nothing; nodes on another instance are reached through its inbox;
over both transports and both stores."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from schedd import protocol as p
from schedd.operators import RequeueFilter
from schedd.transport import StreamChannel, WebSocketChannel
from tests.daemon.harness import Daemon, running_daemon, wire_channels

ADMIN = "admin-secret-0123456789"
TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": '["node-secret"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": '["alice-secret"]',
    "SCHEDD_AUTH__ADMIN_TOKENS": f'["{ADMIN}"]',
}

Wire = StreamChannel | WebSocketChannel


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def wire(d: Daemon, transport: str, role: str, token: str) -> tuple[Wire, p.Welcome]:
    daemon_side, peer = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    await peer.send(p.encode(p.Hello(role=role, version=p.PROTOCOL_VERSION,  # type: ignore[arg-type]
                                     token=token)))
    welcome = p.decode(await peer.receive())
    assert isinstance(welcome, p.Welcome)
    return peer, welcome


async def ask(peer: Wire, message: p.Message) -> p.Message:
    await peer.send(p.encode(message))
    with trio.fail_after(5):
        return p.decode(await peer.receive())


async def test_admin_actions_over_the_wire(store_url: str, transport: str, tmp_path: object,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_daemon(store_url, tmp_path=tmp_path, **TOKENS) as d:
        node, _ = await d.node("p", node_id="n1", token="node-secret")
        admin, welcome = await wire(d, transport, "client", ADMIN)
        assert welcome.principal.startswith("token:")
        acted = await ask(admin, p.Admin(action="drain", node_id="n1", ref="a1"))
        assert acted == p.Acted(action="drain", ref="a1", results=[
            {"node_id": "n1", "outcome": "drained", "state": "draining", "jobs": 0}])
        drain = await node.expect(p.Drain)
        assert welcome.principal in (drain.reason or "")
        again = await ask(admin, p.Admin(action="drain", node_id="n1", ref="a2"))
        assert isinstance(again, p.Acted) and again.results[0]["outcome"] == "unchanged"
        # a submit while drained waits; the undrain hands it to the node
        client = await d.client("alice-secret")
        await client.send(p.Submit(job_id="j1", pools=["p"], max_attempts=1))
        assert (await client.expect(p.Accepted)).state == "queued"
        acted = await ask(admin, p.Admin(action="undrain", node_id="n1", ref="a3"))
        assert isinstance(acted, p.Acted) and acted.results[0]["outcome"] == "undrained"
        assert isinstance(await node.expect(p.Undrain), p.Undrain)
        assign = await node.expect(p.Assign)
        assert assign.job_id == "j1"
        # the node fails it; the operator requeues it, and cancels it
        await node.send(p.Result(job_id="j1", attempt=1, ok=False,
                                 error=p.ErrorInfo(code="E_X", message="x")))
        assert (await client.expect(p.Done)).state == "failed"
        acted = await ask(admin, p.Admin(action="requeue", job_id="j1", ref="a4"))
        assert isinstance(acted, p.Acted)
        assert acted.results == [{"job_id": "j1", "outcome": "requeued", "state": "assigned",
                                  "attempt": 2}]
        assert (await node.expect(p.Assign)).attempt == 2
        acted = await ask(admin, p.Admin(action="cancel", job_id="j1", ref="a5"))
        assert isinstance(acted, p.Acted) and acted.results[0]["outcome"] == "canceled"
        assert (await node.expect(p.Cancel)).job_id == "j1"
        # by filter: the canceled job
        acted = await ask(admin, p.Admin(action="requeue", states=["canceled"], since=600,
                                         ref="a6"))
        assert isinstance(acted, p.Acted)
        assert [(r["job_id"], r["outcome"]) for r in acted.results] == [("j1", "requeued")]
        # unknown ids: the namespace holds no such node or job (another namespace's ids alike)
        unknown = ((p.Admin(action="drain", node_id="elsewhere", ref="x1"), "E_NO_NODE"),
                   (p.Admin(action="undrain", node_id="elsewhere", ref="x2"), "E_NO_NODE"),
                   (p.Admin(action="cancel", job_id="elsewhere", ref="x3"), "E_NO_JOB"),
                   (p.Admin(action="requeue", job_id="elsewhere", ref="x4"), "E_NO_JOB"))
        for message, code in unknown:
            error = await ask(admin, message)
            assert isinstance(error, p.Error) and (error.code, error.ref) == (code, message.ref)
        # the connection is a client's too
        await admin.send(p.encode(p.Status(job_id="x", ref="s")))
        assert isinstance(p.decode(await admin.receive()), p.Error)
        await admin.aclose()
    assert f"operator {welcome.principal} (" in caplog.text
    assert "drain node n1: drained" in caplog.text and "drain node n1: unchanged" in caplog.text


async def test_admin_refused_without_an_admin_token(store_url: str, transport: str,
                                                    tmp_path: object,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    async with running_daemon(store_url, tmp_path=tmp_path, **TOKENS) as d:
        await d.node("p", node_id="n1", token="node-secret")
        client = await d.client("alice-secret")
        await client.send(p.Submit(job_id="j1", pools=["p"]))
        await client.expect(p.Accepted)
        peer, _ = await wire(d, transport, "client", "alice-secret")
        for message in (p.Admin(action="drain", node_id="n1", ref="f1"),
                        p.Admin(action="undrain", node_id="n1", ref="f2"),
                        p.Admin(action="cancel", job_id="j1", ref="f3"),
                        p.Admin(action="requeue", ref="f4")):
            error = await ask(peer, message)
            assert isinstance(error, p.Error)
            assert (error.code, error.ref) == ("E_FORBIDDEN", message.ref)
        nodes = {n.node_id: n for n in await d.app.queries.nodes()}
        assert nodes["n1"].state == "online"
        job = await d.app.queries.job("j1")
        assert job is not None and job.state == "assigned"
        await peer.aclose()
    assert "refused admin drain from client token:" in caplog.text


async def test_an_admin_token_is_not_a_node_token(tmp_path: object) -> None:
    async with running_daemon(tmp_path=tmp_path, **TOKENS) as d:
        conn = await d.connect()
        await conn.send(p.Hello(role="node", version=p.PROTOCOL_VERSION, token=ADMIN))
        assert (await conn.expect(p.Error)).code == "E_AUTH"


async def test_admin_token_without_client_tokens(tmp_path: object) -> None:
    # no client tokens: clients are anonymous, an admin token's connection is its principal's
    env = {"SCHEDD_AUTH__ADMIN_TOKENS": f'["{ADMIN}"]'}
    async with running_daemon(tmp_path=tmp_path, **env) as d:
        anonymous = await d.connect()
        await anonymous.send(p.Hello(role="client", version=p.PROTOCOL_VERSION))
        assert (await anonymous.expect(p.Welcome)).principal == "anonymous"
        await anonymous.send(p.Admin(action="requeue", ref="r"))
        assert (await anonymous.expect(p.Error)).code == "E_FORBIDDEN"
        admin = await d.connect()
        await admin.send(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=ADMIN))
        assert (await admin.expect(p.Welcome)).principal.startswith("token:")
        await admin.send(p.Admin(action="requeue", ref="r"))
        assert await admin.expect(p.Acted) == p.Acted(action="requeue", results=[], ref="r")


async def test_drain_of_a_node_held_by_another_instance(store_url: str, tmp_path: object) -> None:
    if store_url == "memory://":
        store_url = "memory://admin-two-instances"  # one in-process server for both
    async with running_daemon(store_url, tmp_path=tmp_path, **TOKENS) as a, \
            running_daemon(store_url, tmp_path=tmp_path, **TOKENS) as b:
        node, _ = await b.node("p", node_id="nb", token="node-secret")
        admin = await a.client(ADMIN)
        await admin.send(p.Admin(action="drain", node_id="nb", ref="d"))
        assert (await admin.expect(p.Acted)).results[0]["outcome"] == "drained"
        assert isinstance(await node.expect(p.Drain), p.Drain)  # through b's inbox
        await admin.send(p.Admin(action="undrain", node_id="nb", ref="u"))
        assert (await admin.expect(p.Acted)).results[0]["outcome"] == "undrained"
        assert isinstance(await node.expect(p.Undrain), p.Undrain)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"action": "drain"}, "node_id"),
        ({"action": "drain", "node_id": "n", "job_id": "j"}, "drain takes node_id only"),
        ({"action": "cancel"}, "job_id"),
        ({"action": "cancel", "job_id": "j", "pool": "p"}, "cancel takes job_id only"),
        ({"action": "requeue", "node_id": "n"}, "node_id"),
        ({"action": "requeue", "job_id": "j", "states": ["failed"]}, "job_id"),
        ({"action": "requeue", "limit": 101}, "limit"),
        ({"action": "requeue", "limit": 10**12}, "limit"),
        ({"action": "requeue", "states": ["done"]}, "states[0]"),
        ({"action": "requeue", "since": -5}, "since"),
        ({"action": "explode"}, "action"),
    ],
)
async def test_malformed_admin_is_a_bad_field(tmp_path: object, fields: dict[str, object],
                                              problem: str) -> None:
    async with running_daemon(tmp_path=tmp_path, **TOKENS) as d:
        admin = await d.client(ADMIN)
        await admin.send({"type": "admin", **fields, "ref": "m"})
        error = await admin.expect(p.Error)
        assert error.code == "E_BAD_FIELD" and problem in error.message


def test_requeue_filter_default_is_failed() -> None:
    assert RequeueFilter().states == ("failed",)


async def test_admin_tokens_are_reloaded_on_sighup(tmp_path: Path) -> None:
    old, new = "old-admin-token-0123456789", "new-admin-token-0123456789"
    toml = f'[auth]\nclient_tokens = ["c"]\nadmin_tokens = ["{old}"]\n'
    async with running_daemon(tmp_path=tmp_path, toml=toml) as d:
        assert d.app.config_path is not None
        d.app.config_path.write_text(toml.replace(old, new))
        d.app.reload()
        stale = await d.connect()
        await stale.send(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=old))
        assert (await stale.expect(p.Error)).code == "E_AUTH"
        admin = await d.client(new)
        await admin.send(p.Admin(action="requeue", ref="r"))
        assert isinstance(await admin.expect(p.Acted), p.Acted)
