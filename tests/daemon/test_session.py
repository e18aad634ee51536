"""The daemon's side of connections, over in-memory channels: handshake, roles, identity,
limits, and jobs flowing from clients to nodes and back."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from schedd import app as app_module
from schedd import protocol as p
from schedd.core_hooks import token_principal
from schedd.errors import ProtocolError
from schedd.session import MAX_VIOLATIONS
from schedd.transport import StreamChannel, WebSocketChannel
from tests.daemon.harness import MemoryChannel, Peer, channel_pair, running_daemon, wire_channels

TOKENS = {
    "SCHEDD_AUTH__NODE_TOKENS": '["node-secret"]',
    "SCHEDD_AUTH__CLIENT_TOKENS": '["alice-secret", "bob-secret"]',
}


async def test_job_flows_from_client_to_node_and_back(store_url: str) -> None:
    async with running_daemon(store_url) as d:
        node, reg = await d.node("echo", capacity=2, node_id="n1")
        assert (reg.node_id, reg.pools) == ("n1", ["echo"])
        client = await d.connect("client")
        await client.send(p.Submit(pools=["echo"], payload={"hello": 1}, ref="s1"))
        accepted = await client.expect(p.Accepted)
        assert (accepted.state, accepted.duplicate, accepted.ref) == ("assigned", False, "s1")
        assign = await node.expect(p.Assign)
        assert (assign.job_id, assign.attempt, assign.payload) == (accepted.job_id, 1, {"hello": 1})
        await node.send(p.Accept(job_id=assign.job_id, attempt=1))
        await node.send(p.Progress(job_id=assign.job_id, attempt=1, data={"pct": 50}))
        progress = await client.expect(p.Progress)
        assert progress.data == {"pct": 50}
        await node.send(p.Result(job_id=assign.job_id, attempt=1, ok=True, output={"echo": 1}))
        done = await client.expect(p.Done)
        assert (done.job_id, done.state, done.ok, done.output, done.node, done.attempts) == (
            accepted.job_id, "done", True, {"echo": 1}, "n1", 1)
        assert set(done.timings) == {"submitted", "assigned", "accepted", "finished"}
        # a resubmit of the same id returns the job and its result, not a second job
        await client.send(p.Submit(job_id=accepted.job_id, pools=["echo"], ref="s2"))
        again = await client.expect(p.Accepted)
        assert again.duplicate and again.state == "done"
        assert (await client.expect(p.Done)).output == {"echo": 1}
        await client.send(p.Status(job_id=accepted.job_id, ref="st"))
        job = await client.expect(p.Job)
        assert (job.state, job.node, job.ref) == ("done", "n1", "st")
        await client.send(p.Query(what="pools", ref="q"))
        answer = await client.expect(p.Answer)
        assert answer.data["pools"][0]["members"] == {"n1": 2}


async def test_handshake_refusals() -> None:
    async with running_daemon(**TOKENS) as d:
        cases: list[tuple[p.Message | bytes, str]] = [
            (p.Submit(pools=["x"]), "E_ROLE"),
            (p.Hello(role="client", version=99, token="alice-secret"), "E_VERSION"),
            (p.Hello(role="client", version=1), "E_AUTH"),
            (p.Hello(role="client", version=1, token="wrong"), "E_AUTH"),
            (p.Hello(role="node", version=1, token="alice-secret"), "E_AUTH"),
            (b"\xff not json", "E_MALFORMED"),
            (b'{"type": "hello", "role": "client"}', "E_BAD_FIELD"),
            (b'{"type": "launch"}', "E_UNKNOWN_TYPE"),
        ]
        for message, code in cases:
            conn = await d.connect()
            await conn.send(message)
            error = await conn.expect(p.Error)
            assert error.code == code, (message, error)
            assert await conn.closed()
        ok = await d.connect("client", "alice-secret")
        await ok.send(p.Ping(ref="x"))
        assert (await ok.expect(p.Pong)).ref == "x"


async def test_handshake_timeout(tmp_path: Path) -> None:
    async with running_daemon(tmp_path=tmp_path,
                              toml="[limits]\nhandshake_timeout = 0.1\n") as d:
        conn = await d.connect()
        error = await conn.expect(p.Error)
        assert error.code == "E_ROLE" and "no hello" in error.message
        assert await conn.closed()


async def test_principals_bind_to_tokens_and_jobs_to_principals() -> None:
    async with running_daemon(**TOKENS) as d:
        await d.node("p", node_id="n1", token="node-secret")
        alice = await d.connect("client", "alice-secret")
        bob = await d.connect("client", "bob-secret")
        await alice.send(p.Submit(job_id="a1", pools=["p"]))
        await alice.expect(p.Accepted)
        for message in (p.Cancel(job_id="a1", ref="c"), p.Status(job_id="a1", ref="s"),
                        p.Follow(job_id="a1", ref="f"), p.Submit(job_id="a1", pools=["p"])):
            await bob.send(message)
            error = await bob.expect(p.Error)
            assert error.code == "E_NOT_YOURS", (message, error)
        await alice.send(p.Cancel(job_id="a1"))
        done = await alice.expect(p.Done)
        assert done.state == "canceled" and done.error is not None
        # cancelling the finished job again is a no-op: no error, no second done
        await alice.send(p.Cancel(job_id="a1", ref="again"))
        await alice.send(p.Ping(ref="after"))
        assert await alice.recv() == p.Pong(ref="after")
        assert token_principal("alice-secret") != token_principal("bob-secret")


async def test_roles_and_node_identity() -> None:
    async with running_daemon() as d:
        client = await d.connect("client")
        await client.send(p.Register(capacity=1, ref="r"))
        assert (await client.expect(p.Error)).code == "E_ROLE"
        fresh = await d.connect("node")
        await fresh.send(p.Heartbeat(inflight=0))
        assert (await fresh.expect(p.Error)).code == "E_ROLE"
        await fresh.send(p.Submit(pools=["p"]))
        assert (await fresh.expect(p.Error)).code == "E_ROLE"
        n1, _ = await d.node("p", node_id="n1")
        n2, _ = await d.node("q", node_id="n2")
        await n2.send(p.Register(node_id="n1", capacity=1))
        assert (await n2.expect(p.Error)).code == "E_IDENTITY"
        await client.send(p.Submit(pools=["p"], job_id="j"))
        await client.expect(p.Accepted)
        assign = await n1.expect(p.Assign)
        # n2 speaks about a job that is n1's: not a current attempt of n2's (drop it), and n1's
        # attempt is untouched; the error does not name the job's node
        await n2.send(p.Result(job_id=assign.job_id, attempt=1, ok=True))
        error = await n2.expect(p.Error)
        assert (error.code, error.job_id) == ("E_STALE_ATTEMPT", "j")
        assert "n1" not in error.message
        await n1.send(p.Result(job_id="j", attempt=1, ok=True, output=7))
        assert (await client.expect(p.Done)).output == 7
        # a stale attempt from the right node
        await n1.send(p.Accept(job_id="j", attempt=3))
        assert (await n1.expect(p.Error)).code == "E_STALE_ATTEMPT"


async def test_garbage_gets_errors_then_close_and_others_keep_working() -> None:
    async with running_daemon() as d:
        other = await d.connect("client")
        bad = await d.connect("client")
        for i in range(10):
            await bad.send(b"{garbage %d" % i)
            assert (await bad.expect(p.Error)).code == "E_MALFORMED"
        assert await bad.closed()
        await other.send(p.Ping())
        await other.expect(p.Pong)


async def test_rate_limit(tmp_path: Path) -> None:
    async with running_daemon(tmp_path=tmp_path,
                              toml="[limits]\nmax_messages_per_second = 10\n") as d:
        conn = await d.connect("client")
        for _ in range(12):
            await conn.send(p.Ping())
        codes = []
        for _ in range(12):
            message = await conn.recv()
            codes.append(message.code if isinstance(message, p.Error) else message.TYPE)
        # a burst of 10 passes (a little more if the bucket refilled meanwhile), the rest is refused
        assert 10 <= codes.count("pong") <= 11
        assert codes.count("E_RATE") == 12 - codes.count("pong")


async def test_inflight_limit(tmp_path: Path) -> None:
    async with running_daemon(tmp_path=tmp_path, toml="[limits]\nmax_inflight_submits = 2\n") as d:
        client = await d.connect("client")
        for i in range(3):
            await client.send(p.Submit(pools=["p"], job_id=f"j{i}"))
        # replies to concurrent submits come in any order
        replies = [await client.recv() for _ in range(3)]
        assert sorted(type(r).__name__ for r in replies) == ["Accepted", "Accepted", "Error"]
        error = next(r for r in replies if isinstance(r, p.Error))
        assert (error.code, error.job_id) == ("E_INFLIGHT", "j2")


async def test_dropped_node_job_moves_on_and_client_gets_one_done(store_url: str) -> None:
    async with running_daemon(store_url, SCHEDD_NODES__DISCONNECT_GRACE="0.05") as d:
        n1, _ = await d.node("p", node_id="n1")
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="j"))
        await client.expect(p.Accepted)
        await n1.expect(p.Assign)
        await n1.send(p.Accept(job_id="j", attempt=1))
        n2, _ = await d.node("p", node_id="n2")
        await n1.channel.aclose()  # killed mid-job
        assign = await n2.expect(p.Assign)
        assert (assign.job_id, assign.attempt) == ("j", 2)
        await n2.send(p.Result(job_id="j", attempt=2, ok=True, output="second"))
        done = await client.expect(p.Done)
        assert (done.output, done.node, done.attempts) == ("second", "n2", 2)
        with trio.move_on_after(0.3):
            extra = await client.recv()
            pytest.fail(f"unexpected second message {extra!r}")


async def test_a_silent_node_is_found_by_its_instance_and_a_dropped_one_is_not() -> None:
    async with running_daemon(SCHEDD_NODES__DISCONNECT_GRACE="0.05") as d:
        silent, _ = await d.node("p", node_id="silent")
        dropped, _ = await d.node("p", node_id="dropped")
        for node in (silent, dropped):
            await node.send(p.Heartbeat(inflight=0))
            await node.send(p.Ping(ref="beat"))  # answered once the beat is recorded
            assert (await node.expect(p.Pong)).ref == "beat"
        await d.app.batcher.flush()  # the beats count as received now
        await dropped.channel.aclose()
        with trio.fail_after(5):
            while "dropped" in d.app.nodes:
                await trio.sleep(0.01)
        # both send nothing more; a flush one liveness ttl later finds only the connected one
        later = trio.current_time() + d.app.core.settings.liveness_ttl + 1
        await d.app.batcher.flush(now=later)
        assert d.app.batcher.silenced == 1
        with trio.fail_after(5):
            while True:
                nodes = {n.node_id: n for n in await d.app.queries.nodes()}
                if nodes["silent"].state == "offline":
                    break
                await trio.sleep(0.02)
        assert nodes["silent"].reason == "liveness expired"
        assert nodes["dropped"].reason == "connection lost"


async def test_reconnected_node_keeps_running_job(store_url: str) -> None:
    async with running_daemon(store_url, SCHEDD_NODES__DISCONNECT_GRACE="0.5") as d:
        n1, _ = await d.node("p", node_id="n1")
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="j"))
        await n1.expect(p.Assign)
        await n1.send(p.Accept(job_id="j", attempt=1))
        await n1.channel.aclose()
        again, reg = await d.node("p", node_id="n1")  # back within the grace
        await again.send(p.Result(job_id="j", attempt=1, ok=True, output="kept"))
        await client.expect(p.Accepted)
        done = await client.expect(p.Done)
        assert (done.output, done.attempts) == ("kept", 1)
        await trio.sleep(0.6)  # the old connection's offline is fenced out by the new epoch
        await client.send(p.Query(what="nodes"))
        nodes = (await client.expect(p.Answer)).data["nodes"]
        assert [(n["node_id"], n["state"], n["epoch"]) for n in nodes] == [
            ("n1", "online", reg.epoch)]


async def test_follow_after_client_reconnect() -> None:
    async with running_daemon() as d:
        node, _ = await d.node("p", node_id="n1")
        first = await d.connect("client")
        await first.send(p.Submit(pools=["p"], job_id="j"))
        await first.expect(p.Accepted)
        await first.channel.aclose()
        await node.expect(p.Assign)
        second = await d.connect("client")
        await second.send(p.Follow(job_id="j", ref="f"))
        assert (await second.expect(p.Job)).state == "assigned"
        await node.send(p.Result(job_id="j", attempt=1, ok=True, output=1))
        assert (await second.expect(p.Done)).output == 1


async def test_drain_refuses_submits_and_hands_back_unfinished_work(store_url: str) -> None:
    async with running_daemon(store_url, SCHEDD_DRAIN__TIMEOUT="0.3") as d:
        node, _ = await d.node("p", node_id="n1", capacity=2)
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="finishes"))
        await client.send(p.Submit(pools=["p"], job_id="hangs"))
        await client.expect(p.Accepted)
        await client.expect(p.Accepted)
        await node.expect(p.Assign)
        await node.expect(p.Assign)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(d.app.drain)
            assert (await node.expect(p.Drain)).reason == "daemon shutting down"
            await client.send(p.Submit(pools=["p"], job_id="late"))
            assert (await client.expect(p.Error)).code == "E_SHUTTING_DOWN"
            await node.send(p.Result(job_id="finishes", attempt=1, ok=True))
            assert (await client.expect(p.Done)).job_id == "finishes"
        info = await d.app.queries.job("hangs")
        assert info is not None and info.state == "queued" and info.tried == ["n1"]
        assert await client.closed()


class HeldSubmits:
    """Wraps Core.submit: every call records its job id and waits for ``release``."""

    def __init__(self, core: Any) -> None:
        self.real = core.submit
        self.entered: list[str] = []
        self.finished: list[str] = []
        self.release = trio.Event()
        core.submit = self

    async def __call__(self, spec: Any, **kwargs: Any) -> Any:
        self.entered.append(spec.job_id)
        await self.release.wait()
        result = await self.real(spec, **kwargs)
        self.finished.append(spec.job_id)
        return result


async def test_a_clients_submits_run_concurrently() -> None:
    async with running_daemon() as d:
        held = HeldSubmits(d.app.core)
        client = await d.connect("client")
        for job_id in ("a", "b", "c"):
            await client.send(p.Submit(pools=["p"], job_id=job_id, ref=job_id))
        with trio.fail_after(5):
            while len(held.entered) < 3:  # all three scripts started before any finished
                await trio.sleep(0.01)
        held.release.set()
        refs = {(await client.expect(p.Accepted)).ref for _ in range(3)}
        assert refs == {"a", "b", "c"}


async def test_a_message_after_submits_waits_for_them() -> None:
    async with running_daemon() as d:
        held = HeldSubmits(d.app.core)
        cancels: list[str] = []
        real_cancel = d.app.core.cancel

        async def cancel(job_id: str, **kwargs: Any) -> str:
            cancels.append(job_id)
            return await real_cancel(job_id, **kwargs)

        d.app.core.cancel = cancel  # type: ignore[method-assign]
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="j", ref="s"))
        await client.send(p.Cancel(job_id="j", ref="c"))
        await client.send(p.Ping(ref="ping"))
        await trio.sleep(0.1)
        assert cancels == []  # the cancel has not overtaken the submit
        held.release.set()
        assert (await client.expect(p.Accepted)).job_id == "j"
        done = await client.expect(p.Done)
        assert done.job_id == "j" and done.state == "canceled"
        assert (await client.expect(p.Pong)).ref == "ping"  # after what came before it
        assert cancels == ["j"]


async def test_a_second_submit_of_the_same_id_waits_for_the_first() -> None:
    async with running_daemon() as d:
        held = HeldSubmits(d.app.core)
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="j", ref="1"))
        await client.send(p.Submit(pools=["p"], job_id="j", ref="2"))
        await trio.sleep(0.1)
        assert held.entered == ["j"]
        held.release.set()
        first, second = await client.expect(p.Accepted), await client.expect(p.Accepted)
        assert (first.ref, first.duplicate) == ("1", False)
        assert (second.ref, second.duplicate) == ("2", True)


async def test_submits_read_before_the_client_went_still_finish() -> None:
    async with running_daemon() as d:
        held = HeldSubmits(d.app.core)
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], job_id="kept", ref="s"))
        with trio.fail_after(5):
            while not held.entered:
                await trio.sleep(0.01)
        await client.channel.aclose()
        await trio.sleep(0.05)
        held.release.set()
        with trio.fail_after(5):
            while not held.finished:
                await trio.sleep(0.01)
        info = await d.app.queries.job("kept")
        assert info is not None and info.state == "queued"


async def test_repeated_rule_breaking_submits_close_the_connection() -> None:
    async with running_daemon() as d:
        def job_pools(*args: Any) -> list[str]:
            raise ProtocolError(p.E_ROLE, "this plugin says the client broke a rule")

        d.app.plugins.job_pools = job_pools  # type: ignore[method-assign,assignment]
        client = await d.connect("client")
        for i in range(MAX_VIOLATIONS):
            await client.send(p.Submit(pools=["p"], job_id=f"j{i}"))
        for _ in range(MAX_VIOLATIONS):
            assert (await client.expect(p.Error)).code == p.E_ROLE
        assert await client.closed()


class BatchingChannel(MemoryChannel):
    """A daemon-side channel with ``send_many``; its first write waits for ``gate``."""

    def __init__(self, inner: MemoryChannel) -> None:
        super().__init__(inner._send, inner._recv, inner.peer)
        self.batches: list[int] = []
        self.gate = trio.Event()

    async def send_many(self, messages: list[bytes]) -> None:
        if not self.batches:
            self.batches.append(len(messages))
            await self.gate.wait()
        else:
            self.batches.append(len(messages))
        for data in messages:
            await self.send(data)


async def test_queued_messages_go_out_in_one_write_in_order() -> None:
    async with running_daemon() as d:
        ours, theirs = channel_pair()
        daemon_side = BatchingChannel(theirs)
        d.nursery.start_soon(d.app.serve_channel, daemon_side)
        client = Peer(ours)
        await client.send(p.Hello(role="client", version=p.PROTOCOL_VERSION))
        for i in range(20):
            await client.send(p.Ping(ref=str(i)))
        with trio.fail_after(5):
            while not daemon_side.batches:
                await trio.sleep(0.01)
        await trio.sleep(0.1)  # the pings are handled, their pongs queue behind the welcome
        daemon_side.gate.set()
        await client.expect(p.Welcome)
        assert [(await client.expect(p.Pong)).ref for _ in range(20)] == [str(i) for i in range(20)]
        # the first write (the welcome, and any pong queued before the sender ran) waited at
        # the gate; everything queued meanwhile went out in one more write
        assert sum(daemon_side.batches) == 21 and len(daemon_side.batches) <= 2
        assert max(daemon_side.batches) > 1


async def test_drain_goes_past_a_node_the_store_already_took_offline(store_url: str) -> None:
    async with running_daemon(store_url, SCHEDD_DRAIN__TIMEOUT="0.3") as d:
        gone, reg = await d.node("p", node_id="gone")
        kept, _ = await d.node("p", node_id="kept")
        # the store took "gone" offline (the reaper, another instance) while its session lives
        assert await d.app.core.node_offline("gone", epoch=reg.epoch, reason="test") == 0
        await d.app.drain()
        assert (await kept.expect(p.Drain)).reason == "daemon shutting down"
        assert await kept.closed()
        assert await gone.closed()


async def test_silent_connection_is_closed_after_the_idle_timeout() -> None:
    async with running_daemon(SCHEDD_NODES__HEARTBEAT_INTERVAL="0.1",
                              SCHEDD_NODES__HEARTBEAT_FLUSH="0.05",
                              SCHEDD_LIMITS__IDLE_TIMEOUT="0.4") as d:
        silent = await d.connect("client")
        talking = await d.connect("client")
        started = trio.current_time()
        with trio.move_on_after(0.8):
            while True:  # one message every 0.1 s keeps this one open
                await talking.send(p.Ping(ref="x"))
                await talking.expect(p.Pong)
                await trio.sleep(0.1)
        assert await silent.closed()
        assert trio.current_time() - started >= 0.4
        await talking.send(p.Ping(ref="still"))
        assert (await talking.expect(p.Pong)).ref == "still"


async def test_a_scan_over_all_sessions_lets_other_tasks_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """App.visit_sessions yields to the scheduler after each SCAN_SLICE sessions."""
    monkeypatch.setattr(app_module, "SCAN_SLICE", 2)
    events: list[str] = []
    real_checkpoint = trio.lowlevel.checkpoint

    async def checkpoint() -> None:
        events.append("yield")
        await real_checkpoint()

    monkeypatch.setattr(trio.lowlevel, "checkpoint", checkpoint)
    owner: Any = SimpleNamespace(sessions={object() for _ in range(5)})
    await app_module.App.visit_sessions(owner, lambda session: events.append("visit"))
    assert events == ["visit", "visit", "yield"] * 2 + ["visit", "yield"]


async def test_clients_are_counted_for_the_status_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "SCAN_SLICE", 1)
    async with running_daemon() as d:
        await d.connect("client")
        await d.connect("client")
        await d.node("p")
        assert await d.app.count_clients() == 2
        assert d.app.status_line(await d.app.count_clients()).startswith("1 nodes, 2 clients")


async def test_sighup_reload_swaps_tokens(tmp_path: Path) -> None:
    toml = '[auth]\nclient_tokens = ["old"]\nnode_tokens = ["n"]\n'
    async with running_daemon(tmp_path=tmp_path, toml=toml) as d:
        await d.connect("client", "old")
        assert d.app.config_path is not None
        d.app.config_path.write_text(toml.replace('"old"', '"new"') +
                                     "[limits]\nmax_inflight_submits = 7\n")
        d.app.reload()
        assert d.app.limits.max_inflight_submits == 7
        conn = await d.connect()
        await conn.send(p.Hello(role="client", version=1, token="old"))
        assert (await conn.expect(p.Error)).code == "E_AUTH"
        await d.connect("client", "new")
        # a broken file is refused and the running settings stay
        d.app.config_path.write_text("[limits]\nmax_inflight_submits = -1\n")
        d.app.reload()
        assert d.app.limits.max_inflight_submits == 7


async def test_old_connections_queued_heartbeat_does_not_refuse_new_registration() -> None:
    async with running_daemon(SCHEDD_NODES__DISCONNECT_GRACE="0.5") as d:
        old, first = await d.node("p", node_id="n1")
        await old.send(p.Heartbeat(inflight=0))
        await trio.sleep(0.01)
        # the beat sits in the batcher with the old epoch while the node registers again
        new, second = await d.node("p", node_id="n1")
        assert second.epoch > first.epoch
        assert await d.app.batcher.flush() == ["n1"]
        await new.send(p.Ping(ref="alive"))
        assert (await new.expect(p.Pong)).ref == "alive"
        # the current connection's own stale registration is refused
        await d.app.core.register_node(node_id="n1", capacity=1, pools=["p"])
        d.app.batcher.beat("n1", second.epoch)
        await d.app.batcher.flush()
        assert (await new.expect(p.Error)).code == "E_STALE_EPOCH"
        assert await new.closed()


async def test_a_node_registered_before_the_fence_index_registers_again_keeping_its_job(
) -> None:
    """After an upgrade a node registered by the previous version has no entry in the fencing
    index: its beat is stale, its connection closes without taking it offline, and it comes
    back with its job (docs/operations.md)."""
    async with running_daemon() as d:
        node, reg = await d.node("p", node_id="n1")
        client = await d.connect("client")
        await client.send(p.Submit(job_id="j1", pools=["p"]))
        await client.expect(p.Accepted)
        assign = await node.expect(p.Assign)
        await node.send(p.Accept(job_id="j1", attempt=1))
        await d.app.store.execute("HDEL", d.app.core.keys.fence, "n1")
        await node.send(p.Heartbeat(inflight=1, running=["j1"]))
        await node.send(p.Ping(ref="after"))  # answered once both are handled, in order
        assert (await node.expect(p.Pong)).ref == "after"
        await d.app.batcher.flush()  # (or the batcher's own flush was first)
        assert (await node.expect(p.Error)).code == "E_STALE_EPOCH"
        assert await node.closed()
        (record,) = await d.app.queries.nodes()
        assert record.state == "online" and record.used == 1
        again, second = await d.node("p", node_id="n1")
        assert second.epoch > reg.epoch
        await again.send(p.Heartbeat(inflight=1, running=["j1"]))
        await again.send(p.Ping(ref="beat"))
        assert (await again.expect(p.Pong)).ref == "beat"
        await d.app.batcher.flush()
        await again.send(p.Ping(ref="kept"))  # its beats are current: no E_STALE_EPOCH first
        assert (await again.expect(p.Pong)).ref == "kept"
        await again.send(p.Result(job_id=assign.job_id, attempt=1, ok=True))
        assert (await client.expect(p.Done)).state == "done"


async def test_a_bug_while_handling_a_message_is_an_internal_error_not_a_crash() -> None:
    async with running_daemon() as d:
        client = await d.connect("client")

        def broken(*args: object) -> list[str]:
            raise RuntimeError("plugin bug")

        d.app.plugins.job_pools = broken  # type: ignore[method-assign,assignment]
        await client.send(p.Submit(pools=["p"], ref="s"))
        error = await client.expect(p.Error)
        assert (error.code, error.ref) == ("E_INTERNAL", "s")
        await client.send(p.Ping(ref="still"))
        assert (await client.expect(p.Pong)).ref == "still"


async def test_pool_keys_from_hooks_are_checked_before_anything_is_stored() -> None:
    async with running_daemon() as d:
        d.app.plugins.node_pools = lambda *a: [f"p{i}" for i in range(100)]  # type: ignore[method-assign]
        node = await d.connect("node")
        await node.send(p.Register(node_id="n1", capacity=1, ref="r"))
        error = await node.expect(p.Error)
        assert (error.code, error.ref) == ("E_BAD_ARG", "r") and "at most 64" in error.message
        assert await d.app.queries.nodes() == []
        d.app.plugins.node_pools = lambda *a: ["fine"]  # type: ignore[method-assign]
        await node.send(p.Register(node_id="n1", capacity=1))
        assert (await node.expect(p.Registered)).pools == ["fine"]
        d.app.plugins.job_pools = lambda *a: [""]  # type: ignore[method-assign]
        client = await d.connect("client")
        for i in range(12):  # refusals are answered, not counted as abuse
            await client.send(p.Submit(job_id=f"j{i}", pools=["x"]))
            error = await client.expect(p.Error)
            assert (error.code, error.job_id) == ("E_BAD_ARG", f"j{i}")
        await client.send(p.Ping(ref="open"))
        assert (await client.expect(p.Pong)).ref == "open"


async def test_a_repeated_heartbeat_is_decoded_once_and_every_beat_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[Any] = []
    real_decode = p.decode

    def counting_decode(raw: bytes | str) -> p.Message:
        message = real_decode(raw)
        decoded.append(message)
        return message

    monkeypatch.setattr(p, "decode", counting_decode)
    async with running_daemon() as d:
        node, reg = await d.node("p", node_id="n1")
        beats: list[tuple[str, int, float, int]] = []
        monkeypatch.setattr(d.app.batcher, "beat", lambda *args: beats.append(args))

        async def beat(message: p.Heartbeat, ref: str) -> None:
            await node.send(message)
            await node.send(p.Ping(ref=ref))  # answered once the beat was handled
            assert (await node.expect(p.Pong)).ref == ref

        same = p.Heartbeat(inflight=0, load=0.5)
        for index in range(3):
            await beat(same, f"same{index}")
        await beat(p.Heartbeat(inflight=1, running=["j1"], load=0.7), "changed")
        await beat(same, "back")
        heartbeats = [m for m in decoded if isinstance(m, p.Heartbeat)]
        assert [(m.load, m.inflight) for m in heartbeats] == [(0.5, 0), (0.7, 1), (0.5, 0)]
        assert beats == [("n1", reg.epoch, 0.5, 0)] * 3 + [("n1", reg.epoch, 0.7, 1),
                                                           ("n1", reg.epoch, 0.5, 0)]
        # what follows a cached beat is still checked: a broken message is refused
        await node.send(b'{"type": "heartbeat", "inflight": -1, "running": [], "load": 0}')
        assert (await node.expect(p.Error)).code == p.E_BAD_FIELD


async def hub_node(d: Any, node_id: str, transport: str = "tcp",
                   ) -> tuple[StreamChannel | WebSocketChannel, p.Registered]:
    """A node connected over a real socket that the daemon reads through its readiness hub,
    with the TCP transport's channel or the WebSocket transport's."""
    assert d.app.readiness.running
    daemon_side, node = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    await node.send(p.encode(p.Hello(role="node", version=p.PROTOCOL_VERSION)))
    assert isinstance(p.decode(await node.receive()), p.Welcome)
    await node.send(p.encode(p.Register(node_id=node_id, capacity=1, pools=["p"])))
    registered = p.decode(await node.receive())
    assert isinstance(registered, p.Registered)
    return node, registered


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_repeated_heartbeat_read_by_the_hub_is_handled_inline(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with running_daemon() as d:
        node, reg = await hub_node(d, "n1", transport)
        beats: list[tuple[str, int, float, int]] = []
        monkeypatch.setattr(d.app.batcher, "beat", lambda *args: beats.append(args))
        session = d.app.nodes["n1"]
        inline: list[bool] = []
        real_inline = session._inline

        def recording_inline(raw: bytes | str) -> bool:
            inline.append(real_inline(raw))
            return inline[-1]

        node_channel = session.channel
        assert isinstance(node_channel, StreamChannel | WebSocketChannel)
        node_channel.set_inline(recording_inline)

        async def beat(message: p.Heartbeat, ref: str) -> None:
            await node.send(p.encode(message))
            await trio.sleep(0.01)  # arrives alone, while the session waits
            await node.send(p.encode(p.Ping(ref=ref)))  # answered once the beat was handled
            pong = p.decode(await node.receive())
            assert isinstance(pong, p.Pong) and pong.ref == ref

        with trio.fail_after(10):
            same = p.Heartbeat(inflight=0, running=["j9"], load=0.5)
            for index in range(3):
                await beat(same, f"same{index}")
            before = session.last_seen
            await beat(p.Heartbeat(inflight=1, running=["j1"], load=0.7), "changed")
            await beat(same, "back")
            await beat(same, "again")
        # the first of each kind goes through the loop (decoded there), its repeats inline;
        # pings are refused (the loop answers them)
        assert inline == [False, False, True, False, True, False,
                                                 False, False, False, False, True, False]
        assert beats == [("n1", reg.epoch, 0.5, 0)] * 3 + [("n1", reg.epoch, 0.7, 1)] + [
            ("n1", reg.epoch, 0.5, 0)] * 2
        assert session.last_seen > before
        assert session.running_seen[-1] == ["j9"]
        await node.aclose()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_late_accept_gets_stale_attempt_when_the_job_was_queued_again_or_moved(
    tmp_path: Path, transport: str,
) -> None:
    """A node that missed its ack deadline is told E_STALE_ATTEMPT (drop the attempt) for the
    old attempt, whether the job went back to the queue or on to another node."""
    async with running_daemon(tmp_path=tmp_path, toml="[reaper]\ninterval = 0.02\n") as d:
        node, _ = await hub_node(d, "n1", transport)

        async def receive(kind: type[Any]) -> Any:
            message = p.decode(await node.receive())
            assert isinstance(message, kind), message
            return message

        client = await d.connect("client")
        await client.send(p.Submit(job_id="j", pools=["p"], ack_timeout=0.1, max_attempts=3))
        await client.expect(p.Accepted)
        with trio.fail_after(10):
            assert (await receive(p.Assign)).attempt == 1
            cancel = await receive(p.Cancel)  # the ack deadline passed: back to the queue
            assert (cancel.job_id, cancel.attempt) == ("j", 1)
            await node.send(p.encode(p.Accept(job_id="j", attempt=1, ref="late")))
            error = await receive(p.Error)
            assert (error.code, error.job_id, error.ref) == ("E_STALE_ATTEMPT", "j", "late")
            n2, _ = await d.node("p", node_id="n2")  # the queued job moves on to n2
            assert (await n2.expect(p.Assign)).attempt == 2
            await node.send(p.encode(p.Result(job_id="j", attempt=1, ok=True, ref="res")))
            error = await receive(p.Error)
            assert (error.code, error.job_id, error.ref) == ("E_STALE_ATTEMPT", "j", "res")
            assert "n2" not in error.message
        await node.aclose()


async def test_heartbeats_over_the_rate_limit_are_refused_even_inline(tmp_path: Path) -> None:
    async with running_daemon(tmp_path=tmp_path,
                              toml="[limits]\nmax_messages_per_second = 10\n") as d:
        node, _ = await hub_node(d, "n1")
        session = d.app.nodes["n1"]
        session.rate.tokens = 0.0  # as if the burst was spent just now
        session.rate.stamp = trio.current_time()
        with trio.fail_after(10):
            beat = p.encode(p.Heartbeat(inflight=0, load=0.0))
            session._beat_raw, session._beat = beat, p.decode(beat)  # type: ignore[assignment]
            assert not session._inline(beat)  # no token: the loop refuses it and says why
            await node.send(beat)
            error = p.decode(await node.receive())
            assert isinstance(error, p.Error) and error.code == p.E_RATE
        await node.aclose()


async def test_a_heartbeat_with_new_capabilities_is_not_handled_inline() -> None:
    async with running_daemon() as d:
        node, _ = await hub_node(d, "n1")
        session = d.app.nodes["n1"]
        beat = p.encode(p.Heartbeat(inflight=0, capabilities={"gpu": "a100"}))
        session._beat_raw, session._beat = beat, p.decode(beat)  # type: ignore[assignment]
        assert not session._inline(beat)  # the loop moves the node's pools first
        assert not session._inline(b"something else")
        await node.aclose()


def record_scripts(monkeypatch: pytest.MonkeyPatch, d: Any) -> list[tuple[str, list[Any]]]:
    """Every script the daemon's core calls from now on: its name and arguments."""
    calls: list[tuple[str, list[Any]]] = []
    scripts = d.app.core.scripts
    real_call = scripts.call

    async def call(store: Any, name: str, keys: Any, args: Any) -> Any:
        calls.append((name, list(args)))
        return await real_call(store, name, keys, args)

    monkeypatch.setattr(scripts, "call", call)
    return calls


@asynccontextmanager
async def node_holding_a_job(
    transport: str = "tcp", **daemon: Any,
) -> AsyncIterator[tuple[Any, StreamChannel | WebSocketChannel, Peer, p.Assign]]:
    """A daemon, node n1 read through its readiness hub, a client, and the client's job
    assigned to the node: (daemon, node, client, assign)."""
    async with running_daemon(**daemon) as d:
        node, _ = await hub_node(d, "n1", transport)
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], ref="s"))
        await client.expect(p.Accepted)
        assign = p.decode(await node.receive())
        assert isinstance(assign, p.Assign)
        yield d, node, client, assign
        await node.aclose()


async def pong(node: StreamChannel | WebSocketChannel, ref: str) -> list[p.Message]:
    """What the daemon sends the node up to the pong of a ping sent now (so, everything it
    answers to the messages before the ping)."""
    await node.send(p.encode(p.Ping(ref=ref)))
    seen: list[p.Message] = []
    while True:
        message = p.decode(await node.receive())
        if isinstance(message, p.Pong) and message.ref == ref:
            return seen
        seen.append(message)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_an_accept_and_its_result_in_one_write_take_one_script_call(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with node_holding_a_job(transport) as (d, node, client, assign):
        events: list[Any] = []
        d.app.core.on_event = events.append
        calls = record_scripts(monkeypatch, d)
        with trio.fail_after(10):
            await node.send_many([
                p.encode(p.Accept(job_id=assign.job_id, attempt=1, ref="a")),
                p.encode(p.Result(job_id=assign.job_id, attempt=1, ok=True, output={"x": 1},
                                  ref="r"))])
            done = await client.expect(p.Done)
            assert await pong(node, "after") == []  # nothing to answer: no error
        assert (done.state, done.ok, done.output) == ("done", True, {"x": 1})
        assert set(done.timings) == {"submitted", "assigned", "accepted", "finished"}
        assert [(name, args[-1]) for name, args in calls] == [("job_result", "1")]
        assert [(e.state, e.attempt, e.node) for e in events] == [
            ("running", 1, "n1"), ("done", 1, "n1")]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_an_accept_and_result_refused_together_are_answered_as_apart(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with node_holding_a_job(transport) as (d, node, client, assign):
        job_id = assign.job_id
        with trio.fail_after(10):
            await node.send(p.encode(p.Result(job_id=job_id, attempt=1, ok=True, ref="r0")))
            await client.expect(p.Done)
            assert await pong(node, "finished") == []
            calls = record_scripts(monkeypatch, d)
            # the node says both again (a replay): the accept of a finished attempt is refused,
            # the result is a reported no-op, as when they come apart
            await node.send_many([p.encode(p.Accept(job_id=job_id, attempt=1, ref="a")),
                                  p.encode(p.Result(job_id=job_id, attempt=1, ok=True, ref="r"))])
            answers = await pong(node, "replayed")
        assert [(type(m), getattr(m, "code", None), m.ref) for m in answers] == [
            (p.Error, "E_STALE_ATTEMPT", "a")]
        assert [(name, len(args)) for name, args in calls] == [("job_result", 8),
                                                                ("job_result", 7)]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_what_follows_an_accept_other_than_its_result_is_handled_in_turn(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with node_holding_a_job(transport) as (d, node, client, assign):
        job_id = assign.job_id
        calls = record_scripts(monkeypatch, d)
        with trio.fail_after(10):
            await node.send_many([
                p.encode(p.Accept(job_id=job_id, attempt=1)),
                p.encode(p.Result(job_id=job_id, attempt=2, ok=True, ref="other-attempt")),
                p.encode(p.Accept(job_id=job_id, attempt=1)),
                b"{not json",
                p.encode(p.Accept(job_id=job_id, attempt=1)),
                p.encode(p.Progress(job_id=job_id, attempt=1, data={"pct": 1})),
                p.encode(p.Result(job_id=job_id, attempt=1, ok=True)),
            ])
            answers = await pong(node, "after")
            assert (await client.expect(p.Progress)).data == {"pct": 1}
            assert (await client.expect(p.Done)).state == "done"
        assert [(type(m), getattr(m, "code", None), m.ref) for m in answers] == [
            (p.Error, "E_STALE_ATTEMPT", "other-attempt"), (p.Error, p.E_MALFORMED, None)]
        # the run of accepts and results before the malformed frame is one call (three items:
        # caller, node, then eight each); the accept followed by a progress is its own call
        assert [(name, len(args)) for name, args in calls] == [
            ("job_result_many", 2 + 3 * 8), ("job_accept", 4), ("job_progress", 6),
            ("job_result", 7)]
        assert [args[4] for name, args in calls[:1]] == ["a"]  # the accept and the result of
        # another attempt are not one item


async def test_a_result_behind_an_accept_over_the_rate_limit_is_refused(tmp_path: Path) -> None:
    async with node_holding_a_job(tmp_path=tmp_path,
                                  toml="[limits]\nmax_messages_per_second = 1\n",
                                  ) as (d, node, _, assign):
        session = d.app.nodes["n1"]
        session.rate.tokens = 1.0  # one message's worth: the accept's
        session.rate.stamp = trio.current_time()
        with trio.fail_after(10):
            await node.send_many([p.encode(p.Accept(job_id=assign.job_id, attempt=1)),
                                  p.encode(p.Result(job_id=assign.job_id, attempt=1, ok=True))])
            error = p.decode(await node.receive())
        assert isinstance(error, p.Error) and error.code == p.E_RATE
        info = await d.app.queries.job(assign.job_id)
        assert info is not None and info.state == "running"


def record_direct_writes(monkeypatch: pytest.MonkeyPatch, session: Any,
                         refuse: int = 0) -> list[bool]:
    """The outcome of every direct write ``session.post`` tries from now on (the first
    ``refuse`` of them refused, as a busy channel would)."""
    outcomes: list[bool] = []
    real = session.outbox._write_nowait

    def write_nowait(data: bytes) -> bool:
        outcomes.append(len(outcomes) >= refuse and real(data))
        return outcomes[-1]

    monkeypatch.setattr(session.outbox, "_write_nowait", write_nowait)
    return outcomes


async def settled(session: Any) -> None:
    """Until the session's sender waits with nothing queued."""
    with trio.fail_after(5):
        while not session.outbox.sender_idle:
            await trio.sleep(0.001)


@asynccontextmanager
async def idle_node(transport: str = "tcp") -> AsyncIterator[
        tuple[Any, StreamChannel | WebSocketChannel, Any]]:
    """A daemon, node n1 read through its readiness hub, and n1's session, its sender idle:
    (daemon, node, session)."""
    async with running_daemon() as d:
        node, _ = await hub_node(d, "n1", transport)
        session = d.app.nodes["n1"]
        await settled(session)
        yield d, node, session
        await node.aclose()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_an_assign_is_written_to_an_idle_node_by_its_poster(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with idle_node(transport) as (d, node, session):
        writes = record_direct_writes(monkeypatch, session)
        client = await d.connect("client")
        await client.send(p.Submit(pools=["p"], ref="s"))
        with trio.fail_after(10):
            assign = p.decode(await node.receive())
        assert isinstance(assign, p.Assign)
        assert writes == [True]


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_after_a_refused_direct_write_messages_keep_their_order(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with idle_node(transport) as (_, node, session):
        writes = record_direct_writes(monkeypatch, session, refuse=1)
        for ref in ("1", "2", "3"):
            session.post(p.Pong(ref=ref))
        # the first was refused and queued: the rest queue behind it, no direct write tried
        assert writes == [False]
        with trio.fail_after(10):
            refs = [p.decode(await node.receive()).ref for _ in range(3)]
        assert refs == ["1", "2", "3"]
        await settled(session)  # then idle again: the next message is written directly
        session.post(p.Pong(ref="4"))
        assert writes == [False, True]
        with trio.fail_after(10):
            assert p.decode(await node.receive()).ref == "4"


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_what_a_short_direct_write_left_is_sent_before_later_messages(
    monkeypatch: pytest.MonkeyPatch, transport: str,
) -> None:
    async with idle_node(transport) as (_, node, session):
        real_write = os.write
        short = [True]

        def write(fd: int, data: bytes) -> int:
            if short and short.pop():
                return real_write(fd, data[:4])
            return real_write(fd, data)

        monkeypatch.setattr("schedd.transport.sockets.os.write", write)
        session.post(p.Pong(ref="first"))
        assert session.channel.write_pending and not session.outbox.sender_idle
        session.post(p.Pong(ref="second"))
        with trio.fail_after(10):
            refs = [p.decode(await node.receive()).ref for _ in range(2)]
        assert refs == ["first", "second"]
        assert not session.channel.write_pending


async def test_nothing_is_written_directly_once_the_session_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with idle_node() as (d, node, session):
        writes = record_direct_writes(monkeypatch, session)
        await node.aclose()
        with trio.fail_after(10):
            while "n1" in d.app.nodes:
                await trio.sleep(0.005)
        session.post(p.Pong(ref="late"))  # dropped, as it always was
        assert writes == []
