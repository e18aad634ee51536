"""Array frames and burst submits over the wire, on both transports and both stores: a batch
mixing good, duplicate and refused jobs answered per job; over-long, empty and malformed arrays;
attachments refused inside an array; a peer without the `batch` flag; one principal's batch
against another's job ids; a connection closed right after its array."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from schedd import protocol as p
from schedd.principals import token_principal
from schedd.store.keys import Keys
from tests.daemon.harness import Daemon, running_daemon, wire_channels
from tests.daemon.test_admin import TOKENS, Wire

BOB = "bob-secret"
TWO = {**TOKENS, "SCHEDD_AUTH__CLIENT_TOKENS": f'["alice-secret", "{BOB}"]'}
ALICE_QUOTA = ('[quotas.principals."' + token_principal("alice-secret") + '"]\n'
               'max_queued = 4\n')


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def connect(d: Daemon, transport: str, token: str, *, batch: bool = True,
                  ) -> tuple[Wire, p.Welcome, bytes]:
    daemon_side, peer = wire_channels(d, transport)
    d.nursery.start_soon(d.app.serve_channel, daemon_side)
    await peer.send(p.encode(p.Hello(role="client", version=p.PROTOCOL_VERSION, token=token,
                                     batch=batch)))
    raw = await peer.receive()
    welcome = p.decode(raw)
    assert isinstance(welcome, p.Welcome)
    return peer, welcome, raw if isinstance(raw, bytes) else raw.encode()


async def receive(peer: Wire, count: int) -> tuple[list[p.Message], list[int]]:
    """``count`` messages, and the number of messages each frame held (1: a plain frame)."""
    got: list[p.Message] = []
    sizes: list[int] = []
    with trio.fail_after(10):
        while len(got) < count:
            raw = await peer.receive()
            if p.is_batch(raw):
                items = orjson.loads(raw)
                sizes.append(len(items))
                got += [p.decode(orjson.dumps(item)) for item in items]
            else:
                sizes.append(1)
                got.append(p.decode(raw))
    return got, sizes


def by_ref(messages: list[p.Message]) -> dict[str, p.Message]:
    return {m.ref: m for m in messages if m.ref is not None}


def submit(job_id: str, ref: str, **extra: Any) -> dict[str, Any]:
    return {"type": "submit", "job_id": job_id, "pools": ["p"], "ref": ref, **extra}


async def test_a_mixed_batch_is_answered_per_job_and_the_good_ones_run(
        store_url: str, transport: str, tmp_path: object) -> None:
    async with running_daemon(store_url, ALICE_QUOTA, tmp_path=tmp_path, **TWO) as d:
        node, _ = await d.node("p", capacity=8, node_id="n1", token="node-secret")
        bob, _, _ = await connect(d, transport, BOB)
        await bob.send(p.encode(p.Submit(job_id="bobs", pools=["nowhere"], ref="b")))
        assert isinstance((await receive(bob, 1))[0][0], p.Accepted)
        alice, welcome, _ = await connect(d, transport, "alice-secret")
        assert welcome.max_batch == 256
        await alice.send(p.encode(p.Submit(job_id="old", pools=["q"], ref="o")))
        assert isinstance((await receive(alice, 1))[0][0], p.Accepted)
        batch = [submit("g1", "r1"), submit("g2", "r2"), submit("g1", "r3"),
                 submit("old", "r4"), submit("bad", "r5", priority="high"),
                 submit("bobs", "r6"), submit("q1", "r7", pools=["q"]),
                 submit("q2", "r8", pools=["q"]), submit("q3", "r9", pools=["q"]),
                 submit("q4", "r10", pools=["q"]), {"type": "ping", "ref": "r11"}]
        await alice.send(orjson.dumps(batch))
        got, _sizes = await receive(alice, 11)
        answers = by_ref(got)
        r1, r2, r3, r4 = (answers[f"r{i}"] for i in range(1, 5))
        assert isinstance(r1, p.Accepted) and not r1.duplicate and r1.job_id == "g1"
        assert isinstance(r2, p.Accepted) and not r2.duplicate
        assert isinstance(r3, p.Accepted) and r3.duplicate and r3.job_id == "g1"
        assert isinstance(r4, p.Accepted) and r4.duplicate and r4.job_id == "old"
        r5 = answers["r5"]
        assert isinstance(r5, p.Error) and r5.code == "E_BAD_FIELD"
        r6 = answers["r6"]
        assert isinstance(r6, p.Error) and r6.code == "E_NOT_YOURS" and r6.job_id == "bobs"
        queued = [answers[f"r{i}"] for i in range(7, 11)]
        # "old" and three more fill alice's max_queued of 4: the fourth is refused alone
        assert [type(m).__name__ for m in queued] == ["Accepted"] * 3 + ["Error"]
        assert isinstance(queued[3], p.Error) and queued[3].code == "E_QUOTA"
        assert isinstance(answers["r11"], p.Pong)
        # the good ones run, once each
        assigned = {(await node.expect(p.Assign)).job_id for _ in range(2)}
        assert assigned == {"g1", "g2"}
        for job_id in sorted(assigned):
            await node.send(p.Accept(job_id=job_id, attempt=1))
            await node.send(p.Result(job_id=job_id, attempt=1, ok=True, output=job_id))
        done, _ = await receive(alice, 2)
        assert sorted(m.job_id for m in done if isinstance(m, p.Done)) == ["g1", "g2"]
        job = await d.app.queries.job("bobs")
        assert job is not None and job.principal == token_principal(BOB)
        assert await d.app.store.execute("EXISTS", Keys(d.app.config.schedd.namespace)
                                          .job("q4")) == 0


async def test_replies_to_a_batch_come_packed_for_a_batch_peer_only(
        store_url: str, transport: str, tmp_path: object) -> None:
    async with running_daemon(store_url, tmp_path=tmp_path, **TWO) as d:
        new, _, _ = await connect(d, transport, "alice-secret")
        await new.send(orjson.dumps([submit(f"n{i}", f"n{i}") for i in range(20)]))
        got, sizes = await receive(new, 20)
        assert all(isinstance(m, p.Accepted) for m in got)
        assert max(sizes) > 1  # the burst's accepted replies share array frames
        old, welcome, raw = await connect(d, transport, BOB, batch=False)
        assert welcome.max_batch == 0 and b"max_batch" not in raw  # an old peer reads it
        await old.send(orjson.dumps([submit(f"o{i}", f"o{i}") for i in range(20)]))
        got, sizes = await receive(old, 20)
        assert all(isinstance(m, p.Accepted) for m in got) and set(sizes) == {1}


async def test_bad_arrays_are_refused(store_url: str, transport: str, tmp_path: object) -> None:
    async with running_daemon(store_url, "[limits]\nmax_batch = 3\n", tmp_path=tmp_path,
                              **TWO) as d:
        alice, welcome, _ = await connect(d, transport, "alice-secret")
        assert welcome.max_batch == 3
        await alice.send(orjson.dumps([submit(f"x{i}", f"x{i}") for i in range(4)]))
        (over,), _ = await receive(alice, 1)
        assert isinstance(over, p.Error) and over.code == "E_BAD_BATCH"
        assert "at most 3" in over.message
        await alice.send(b"[]")
        (empty,), _ = await receive(alice, 1)
        assert isinstance(empty, p.Error) and empty.code == "E_BAD_BATCH"
        await alice.send(b"[{]")
        (broken,), _ = await receive(alice, 1)
        assert isinstance(broken, p.Error) and broken.code == "E_BAD_BATCH"
        attached = submit("att", "a2", attachments=[
            {"name": "x", "size": 1, "media_type": "text/plain"}])
        await alice.send(orjson.dumps([5, attached, submit("ok", "a3")]))
        got, _ = await receive(alice, 3)
        errors = [m for m in got if isinstance(m, p.Error)]
        assert [e.code for e in errors] == ["E_BAD_BATCH", "E_BAD_BATCH"]
        assert "not a message" in errors[0].message
        assert errors[1].ref == "a2" and errors[1].job_id == "att"
        assert "attachments" in errors[1].message
        assert any(isinstance(m, p.Accepted) and m.ref == "a3" for m in got)
        for job_id in ("x0", "att"):
            assert await d.app.queries.job(job_id) is None


async def test_closed_right_after_its_array_every_job_is_stored_once(
        store_url: str, transport: str, tmp_path: object) -> None:
    async with running_daemon(store_url, tmp_path=tmp_path, **TWO) as d:
        alice, _, _ = await connect(d, transport, "alice-secret")
        await alice.send(orjson.dumps([submit(f"c{i}", f"c{i}") for i in range(50)]))
        await alice.aclose()
        again, _, _ = await connect(d, transport, "alice-secret")
        await again.send(orjson.dumps([submit(f"c{i}", f"c{i}") for i in range(50)]))
        got, _ = await receive(again, 50)
        assert all(isinstance(m, p.Accepted) for m in got)
        queries = d.app.queries
        for i in range(50):
            job = await queries.job(f"c{i}")
            assert job is not None and job.state == "queued"
        ns = Keys(d.app.config.schedd.namespace)
        assert int(await d.app.store.execute("HGET", ns.counts, "seq")) == 50


async def test_a_store_failure_answers_every_job_of_the_burst(
        store_url: str, transport: str, tmp_path: object, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from schedd.errors import StoreUnavailable

    async with running_daemon(store_url, tmp_path=tmp_path, **TWO) as d:
        alice, _, _ = await connect(d, transport, "alice-secret")

        async def unavailable(*_: Any, **__: Any) -> Any:
            raise StoreUnavailable("the store went away")

        monkeypatch.setattr(d.app.core, "_call", unavailable)
        await alice.send(orjson.dumps([submit(f"u{i}", f"u{i}") for i in range(5)]))
        got, _ = await receive(alice, 5)
        assert sorted(m.ref or "" for m in got if isinstance(m, p.Error)
                      and m.code == p.E_UNAVAILABLE) == [f"u{i}" for i in range(5)]
        await alice.send(p.encode(p.Ping(ref="after")))
        (pong,), _ = await receive(alice, 1)
        assert isinstance(pong, p.Pong)  # the connection goes on


async def test_each_element_counts_toward_the_message_rate(
        store_url: str, transport: str, tmp_path: object) -> None:
    async with running_daemon(store_url, "[limits]\nmax_messages_per_second = 5\n",
                              tmp_path=tmp_path, **TWO) as d:
        alice, _, _ = await connect(d, transport, "alice-secret")
        await alice.send(orjson.dumps([{"type": "ping", "ref": f"p{i}"} for i in range(8)]))
        got, _ = await receive(alice, 8)
        assert sum(isinstance(m, p.Pong) for m in got) <= 6  # a second's worth, and a refill
        assert sum(isinstance(m, p.Error) and m.code == p.E_RATE for m in got) >= 2


async def test_the_in_flight_limit_counts_each_job_of_a_burst(
        store_url: str, transport: str, tmp_path: object) -> None:
    async with running_daemon(store_url, "[limits]\nmax_inflight_submits = 3\n",
                              tmp_path=tmp_path, **TWO) as d:
        alice, _, _ = await connect(d, transport, "alice-secret")
        await alice.send(orjson.dumps([submit(f"i{i}", f"i{i}") for i in range(5)]))
        got, _ = await receive(alice, 5)
        answers = by_ref(got)
        assert [type(answers[f"i{i}"]).__name__ for i in range(5)] == \
            ["Accepted"] * 3 + ["Error"] * 2
        assert {m.code for m in got if isinstance(m, p.Error)} == {p.E_INFLIGHT}
