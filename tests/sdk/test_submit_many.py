"""Client.submit_many: array frames of the daemon's max_batch, one answer per job, array frames
read (a scripted fake daemon on both transports), a resend after a lost connection, and against
a real daemon (both transports, both stores)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from schedd.protocol import Accepted, Done, Error, Submit, encode, encode_batch
from schedd.sdk import Client, JobContext, Node, RequestFailed
from tests.e2e_daemon import DaemonProcess
from tests.sdk import FakeDaemon, FakePeer, start_fake_daemon


@pytest.fixture(params=["tcp", "ws"])
async def daemon(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeDaemon:
    return await start_fake_daemon(nursery, websocket=request.param == "ws")


def jobs(n: int, prefix: str = "j") -> list[dict[str, Any]]:
    return [{"payload": i, "pools": ["p"], "job_id": f"{prefix}{i}"} for i in range(n)]


async def answer(peer: FakePeer, count: int, refuse: str = "") -> list[Submit]:
    """Receive ``count`` submits and answer them in one array frame (``refuse``d: E_QUOTA)."""
    submits = [await peer.recv(Submit) for _ in range(count)]
    replies = [encode(Error(code="E_QUOTA", message="max_queued: full", job_id=s.job_id,
                            ref=s.ref)) if s.job_id == refuse
               else encode(Accepted(job_id=s.job_id or "", state="queued", ref=s.ref))
               for s in submits]
    await peer.send_raw(encode_batch(replies))
    return submits


async def test_jobs_go_in_arrays_of_max_batch_and_replies_in_arrays_are_read(
        daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    seen: list[int] = []

    async def script() -> None:
        peer = await daemon.accept()
        hello = await peer.handshake(max_batch=3)
        assert hello.batch
        await answer(peer, 7, refuse="j4")
        seen.extend(peer.frames[1:])  # after the hello
        await peer.send_raw(encode_batch([encode(Done(job_id=f"j{i}", state="done", ok=True,
                                                      output=i, attempts=1)) for i in (0, 1)]))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handles = await client.submit_many(jobs(7))
            assert [h.job_id for h in handles] == [f"j{i}" for i in range(7)]
            assert [(await h.result()).output for h in handles[:2]] == [0, 1]
            with pytest.raises(RequestFailed) as refused:
                await handles[4].result()
            assert refused.value.code == "E_QUOTA"
            assert not handles[3].finished and handles[3].state == "queued"
    assert seen == [3, 3, 1]


async def test_a_daemon_without_max_batch_gets_a_frame_per_job(
        daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    seen: list[int] = []

    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await answer(peer, 4)
        seen.extend(peer.frames[1:])

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handles = await client.submit_many(jobs(4))
    assert [h.duplicate for h in handles] == [False] * 4
    assert seen == [1, 1, 1, 1]


async def test_a_lost_connection_sends_the_same_jobs_again(
        daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    first: list[Submit] = []
    second: list[Submit] = []

    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake(max_batch=8)
        first.extend([await peer.recv(Submit) for _ in range(5)])
        await peer.close()  # every job unanswered
        again = await daemon.accept()
        await again.handshake(max_batch=8)
        second.extend(await answer(again, 5))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handles = await client.submit_many(jobs(5))
    assert [s.job_id for s in first] == [s.job_id for s in second] == [f"j{i}" for i in range(5)]
    assert all(h.state == "queued" for h in handles)


async def test_bad_arguments_raise_before_anything_is_sent(
        daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    peers: list[FakePeer] = []

    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake(max_batch=8)
        peers.append(peer)

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            with pytest.raises(ValueError, match="attachments"):
                await client.submit_many([{"pools": ["p"], "attachments": {"a": b"x"}}])
            with pytest.raises(ValueError):
                await client.submit_many([{"pools": ["p"]}, {"pools": ["p"], "priority": 10**6}])
            await trio.sleep(0.1)
    assert not [m for m in peers[0].received if isinstance(m, Submit)]


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_submit_many_against_a_daemon(tmp_path: Path, store_url: str,
                                            transport: str) -> None:
    async def echo(job: JobContext) -> Any:
        return job.payload

    daemon = DaemonProcess(tmp_path, store_url)
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(Node(url, echo, pools=["p"], capacity=4, node_id="n").run)
                async with Client.connect(url) as client:
                    await client.submit(1, pools=["p"], job_id="before")
                    batch = [*jobs(40), {"payload": 1, "pools": ["p"], "job_id": "before"},
                             {"payload": 2, "job_id": "nopool"},
                             {"payload": 3, "pools": ["p"], "job_id": "j3"}]
                    handles = await client.submit_many(batch)
                    outputs = [(await h.result()).output for h in handles[:40]]
                    assert outputs == list(range(40))
                    assert handles[40].duplicate and handles[42].duplicate
                    with pytest.raises(RequestFailed) as refused:
                        await handles[41].result()
                    assert refused.value.code == "E_BAD_ARG"
                    page = await client.query("jobs", limit=100)
                    ids = [job["job_id"] for job in page["jobs"]]
                    assert sorted(ids) == sorted([f"j{i}" for i in range(40)] + ["before"])
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()


def test_arrays_in_json() -> None:
    assert orjson.loads(encode_batch([b'{"type":"ping"}', b'{"type":"pong"}'])) == [
        {"type": "ping"}, {"type": "pong"}]


async def _cut_after_frames(client_side: trio.SocketStream, port: int, frames: int,
                            cut: trio.Event) -> None:
    """Forward a connection to the daemon; after ``frames`` whole frames from the client and a
    few bytes of the next, wait for the daemon to handle them, then drop both sides."""
    daemon_side = await trio.open_tcp_stream("127.0.0.1", port)

    async def back() -> None:
        try:
            async for data in daemon_side:
                await client_side.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(back)
        buffer, seen = b"", 0
        try:
            async for data in client_side:
                buffer += data
                while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                    size = 4 + int.from_bytes(buffer[:4], "big")
                    if seen == frames:
                        break
                    await daemon_side.send_all(buffer[:size])
                    buffer, seen = buffer[size:], seen + 1
                if seen == frames and len(buffer) > 10:
                    await daemon_side.send_all(buffer[:10])  # the next frame, cut short
                    await trio.sleep(0.5)  # the daemon handles the whole frames
                    break
        finally:
            cut.set()
            await daemon_side.aclose()
            await client_side.aclose()
            nursery.cancel_scope.cancel()


async def test_a_connection_cut_mid_burst_stores_every_job_once(
        store_url: str, tmp_path: Path) -> None:
    from schedd.devtools.redis_process import free_port
    from schedd.store.keys import Keys
    from schedd.testing import running_daemon

    port = free_port()
    toml = ('[plugins]\nenabled = ["transport_tcp"]\n'
            f'[plugins.transport_tcp]\nlisten = "127.0.0.1:{port}"\n')
    async with running_daemon(store_url, toml, tmp_path) as d, trio.open_nursery() as nursery:
        cut = trio.Event()
        connections = 0

        async def proxy(stream: trio.SocketStream) -> None:
            nonlocal connections
            connections += 1
            if connections == 1:  # the hello and the first array of 256, then cut
                await _cut_after_frames(stream, port, 2, cut)
                return
            await _cut_after_frames(stream, port, 10**9, trio.Event())

        listeners = await nursery.start(partial(trio.serve_tcp, proxy, 0, host="127.0.0.1"))
        url = f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        with trio.fail_after(30):
            async with Client.connect(url) as client:
                handles = await client.submit_many(jobs(300))
        assert cut.is_set() and connections >= 2
        assert sum(h.duplicate for h in handles) == 256  # stored before the cut, once
        ns = Keys(d.app.config.schedd.namespace)
        assert int(await d.app.store.execute("HGET", ns.counts, "seq")) == 300
        for i in (0, 255, 256, 299):
            job = await d.app.queries.job(f"j{i}")
            assert job is not None and job.state == "queued"
        nursery.cancel_scope.cancel()
