"""The client SDK against a scripted fake daemon (tests/sdk/__init__.py) over tcp://."""

from __future__ import annotations

import pytest
import trio

from schedd.protocol import (
    Accepted,
    Answer,
    Cancel,
    Done,
    Error,
    ErrorInfo,
    Follow,
    Job,
    Ping,
    Pong,
    Progress,
    Query,
    Status,
    Submit,
)
from schedd.sdk.client import Client, JobHandle, JobLost, RequestFailed
from schedd.sdk.connect import ConnectFailed
from tests.sdk import FakeDaemon, FakePeer, closed_port_url, start_fake_daemon


@pytest.fixture(params=["tcp", "ws"])
async def daemon(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeDaemon:
    """A fake daemon on each transport (the SDK's transports come from schedd.sdk.connect)."""
    return await start_fake_daemon(nursery, websocket=request.param == "ws")


def done(job_id: str, output: object = "out", **overrides: object) -> Done:
    values: dict[str, object] = {
        "job_id": job_id,
        "state": "done",
        "ok": True,
        "output": output,
        "node": "n1",
        "attempts": 1,
    }
    values.update(overrides)
    return Done(**values)  # type: ignore[arg-type]


async def accept(peer: FakePeer, state: str = "queued", duplicate: bool = False) -> Submit:
    submit = await peer.recv(Submit)
    assert submit.job_id is not None
    await peer.send(
        Accepted(job_id=submit.job_id, state=state, duplicate=duplicate, ref=submit.ref)  # type: ignore[arg-type]
    )
    return submit


async def test_submit_accepted_done(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    seen: list[Submit] = []

    async def script() -> None:
        peer = await daemon.accept()
        hello = await peer.handshake(principal="app")
        assert hello.token == "app-key" and hello.name == "tester"
        submit = await accept(peer)
        seen.append(submit)
        await peer.send(done(submit.job_id or "", output={"text": "hello"}))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url, token="app-key", name="tester") as client:
            assert client.principal == "app"
            assert client.instance == "fake-a"
            handle = await client.submit({"text": "你好"}, pools=["zh>en"], priority=5)
            result = await handle.result()
    submit = seen[0]
    assert submit.job_id is not None and len(submit.job_id) == 32  # generated client-side
    assert submit.pools == ["zh>en"] and submit.payload == {"text": "你好"}
    assert submit.priority == 5
    assert handle.job_id == submit.job_id
    assert not handle.duplicate
    assert result.ok and result.output == {"text": "hello"}
    assert handle.state == "done"


async def test_progress_stream_then_done(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        submit = await accept(peer, state="assigned")
        job_id = submit.job_id or ""
        for index in range(3):
            await peer.send(Progress(job_id=job_id, attempt=1, data={"partial": index}))
        await peer.send(done(job_id))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(job_id="j1", pools=["p"])
            assert handle.state == "assigned"
            items = [data async for data in handle.progress()]
            assert items == [{"partial": 0}, {"partial": 1}, {"partial": 2}]
            assert (await handle.result()).output == "out"


async def test_duplicate_submit_of_finished_job_gets_its_done_once(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        submit = await accept(peer, state="done", duplicate=True)
        assert submit.job_id == "j1"
        # The daemon sends the retained done at once; a second (later) one must be ignored.
        await peer.send(done("j1", output="first"))
        await peer.send(done("j1", output="second"))
        status = await peer.recv(Status)
        await peer.send(Job(job_id="j1", state="done", attempt=1, ref=status.ref))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit("x", job_id="j1", pools=["p"])
            assert handle.duplicate
            result = await handle.result()
            assert result.output == "first"
            await client.status("j1")  # the second done has been read by now
            assert (await handle.result()).output == "first"


async def test_done_right_behind_accepted_is_not_lost(nursery: trio.Nursery) -> None:
    daemon = await start_fake_daemon(nursery)  # TCP: both frames go in one write

    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        submit = await peer.recv(Submit)
        job_id = submit.job_id or ""
        accepted = Accepted(job_id=job_id, state="running", ref=submit.ref)
        from schedd.protocol import encode, encode_frame

        # Both in one write: the done is read before the submit's caller even wakes up.
        await peer.stream.send_all(
            encode_frame(encode(accepted)) + encode_frame(encode(done(job_id)))
        )

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(pools=["p"])
            assert (await handle.result()).ok
            assert handle.state == "done"


async def test_cancel_is_confirmed_and_done_follows(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        peer.auto_pong = False  # the pong confirming a cancel comes after the daemon's answer
        await peer.handshake()
        await accept(peer)
        cancel = await peer.recv(Cancel)
        assert cancel.job_id == "j1" and cancel.attempt is None
        await peer.send(
            Done(
                job_id="j1",
                state="canceled",
                ok=False,
                error=ErrorInfo(code="E_CANCELED", message="cancelled by the client"),
            )
        )
        ping = await peer.recv(Ping)
        await peer.send(Pong(ref=ping.ref))
        # A refused cancel: the error carries the cancel's ref.
        cancel = await peer.recv(Cancel)
        await peer.send(
            Error(code="E_NO_JOB", message="no job nope", job_id="nope", ref=cancel.ref)
        )
        ping = await peer.recv(Ping)
        await peer.send(Pong(ref=ping.ref))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(job_id="j1", pools=["p"])
            await handle.cancel()
            result = await handle.result()
            assert result.state == "canceled" and not result.ok
            assert result.error is not None and result.error.code == "E_CANCELED"
            with pytest.raises(RequestFailed) as failed:
                await client.cancel("nope")
            assert failed.value.code == "E_NO_JOB"


async def test_status_and_query(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        status = await peer.recv(Status)
        assert status.job_id == "j1"
        await peer.send(
            Job(
                job_id="j1",
                state="running",
                attempt=2,
                node="n1",
                info={"pools": ["p"]},
                ref=status.ref,
            )
        )
        query = await peer.recv(Query)
        assert query.what == "stats"
        await peer.send(Answer(what="stats", data={"counts": {"done": 3}}, ref=query.ref))
        status = await peer.recv(Status)
        await peer.send(Error(code="E_NOT_YOURS", message="not yours", job_id="j2", ref=status.ref))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            job = await client.status("j1")
            assert (job.state, job.attempt, job.node) == ("running", 2, "n1")
            assert await client.query("stats") == {"counts": {"done": 3}}
            with pytest.raises(RequestFailed) as failed:
                await client.status("j2")
            assert failed.value.code == "E_NOT_YOURS"
            assert failed.value.job_id == "j2"


async def test_auth_refusal_raises_request_failed_without_retrying(
    nursery: trio.Nursery,
) -> None:
    first = await start_fake_daemon(nursery)
    second = await start_fake_daemon(nursery)

    async def script() -> None:
        peer = await first.accept()
        await peer.refuse("E_AUTH", "token refused")

    nursery.start_soon(script)
    with trio.fail_after(10):
        with pytest.raises(RequestFailed) as failed:
            async with Client.connect([first.url, second.url], token="bad"):
                raise AssertionError("connected with a refused token")
    assert failed.value.code == "E_AUTH"
    assert "token refused" in str(failed.value)
    assert second.connections == 0  # a fatal refusal is not retried elsewhere


async def test_failover_to_the_next_url(nursery: trio.Nursery) -> None:
    busy = await start_fake_daemon(nursery)
    good = await start_fake_daemon(nursery)

    async def script() -> None:
        peer = await busy.accept()
        await peer.refuse("E_SHUTTING_DOWN", "bye")
        peer = await good.accept()
        await peer.handshake()

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect([closed_port_url(), busy.url, good.url]) as client:
            assert client.instance == "fake-a"


async def test_no_daemon_raises_connect_failed() -> None:
    with trio.fail_after(10):
        with pytest.raises(ConnectFailed):
            async with Client.connect([closed_port_url(), closed_port_url()]):
                raise AssertionError("connected to nothing")


async def test_reconnect_refollows_pending_jobs(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await accept(peer)  # j1: acknowledged, then the connection drops
        submit = await peer.recv(Submit)  # j2: in flight when the connection drops
        assert submit.job_id == "j2"
        await peer.close()

        peer = await daemon.accept()
        await peer.handshake()
        # j2's submit is retried (same job_id); j1 is re-followed. Order between them is free.
        got: dict[str, object] = {}
        for _ in range(2):
            message = await peer.recv_any()
            got[message.TYPE] = message
        follow = got["follow"]
        assert isinstance(follow, Follow) and follow.job_id == "j1"
        await peer.send(Job(job_id="j1", state="running", attempt=1, ref=follow.ref))
        resubmit = got["submit"]
        assert isinstance(resubmit, Submit) and resubmit.job_id == "j2"
        await peer.send(Accepted(job_id="j2", state="queued", duplicate=True, ref=resubmit.ref))
        await peer.send(done("j1", output="one"))
        await peer.send(done("j2", output="two"))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            first = await client.submit(job_id="j1", pools=["p"])
            second = await client.submit(job_id="j2", pools=["p"])
            assert (await first.result()).output == "one"
            assert (await second.result()).output == "two"
    assert daemon.connections == 2


async def test_shutting_down_on_submit_moves_to_another_daemon(nursery: trio.Nursery) -> None:
    first = await start_fake_daemon(nursery)
    second = await start_fake_daemon(nursery)

    async def script() -> None:
        peer = await first.accept()
        await peer.handshake()
        submit = await peer.recv(Submit)
        await peer.send(Error(code="E_SHUTTING_DOWN", message="draining", ref=submit.ref))
        peer = await second.accept()
        await peer.handshake()
        retried = await accept(peer)
        assert retried.job_id == submit.job_id
        await peer.send(done(retried.job_id or ""))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect([first.url, second.url]) as client:
            handle = await client.submit(pools=["p"])
            assert (await handle.result()).ok


async def test_without_reconnect_a_drop_fails_pending_work(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await accept(peer)
        await peer.recv(Status)
        await peer.close()

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url, reconnect=False) as client:
            handle = await client.submit(job_id="j1", pools=["p"])
            with pytest.raises(RequestFailed) as failed:
                await client.status("j1")
            assert failed.value.code == "E_UNAVAILABLE"
            with pytest.raises(RequestFailed) as failed:
                await handle.result()
            assert failed.value.code == "E_UNAVAILABLE"
            with pytest.raises(RequestFailed):
                await client.query("nodes")


async def test_refollow_of_a_forgotten_job_fails_its_handle(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await accept(peer)
        await peer.close()
        peer = await daemon.accept()
        await peer.handshake()
        follow = await peer.recv(Follow)
        await peer.send(Error(code="E_NO_JOB", message="gone", job_id="j1", ref=follow.ref))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(job_id="j1", pools=["p"])
            with pytest.raises(JobLost) as lost:
                await handle.result()
            assert (lost.value.code, lost.value.job_id) == ("E_NO_JOB", "j1")


async def test_a_job_the_daemon_no_longer_knows_fails_its_handle_while_connected(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    """Jobs waited for are checked with status; one answered E_NO_JOB (its store lost it)
    fails with JobLost instead of waiting forever; one that exists keeps waiting."""
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await accept(peer)
        await accept(peer)
        answered: set[str] = set()
        while answered != {"lost", "kept"}:
            status = await peer.recv(Status)
            answered.add(status.job_id)
            if status.job_id == "lost":
                await peer.send(Error(code="E_NO_JOB", message="job lost does not exist",
                                      job_id="lost", ref=status.ref))
            else:
                await peer.send(Job(job_id="kept", state="queued", ref=status.ref))
        await peer.send(done("kept"))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url, lost_check_interval=0.05) as client:
            lost = await client.submit(job_id="lost", pools=["p"])
            kept = await client.submit(job_id="kept", pools=["p"])
            with pytest.raises(JobLost) as failed:
                await lost.result()
            assert (failed.value.code, failed.value.job_id) == ("E_NO_JOB", "lost")
            assert "will never come" in str(failed.value)
            assert (await kept.result()).ok


async def test_a_job_followed_elsewhere_fails_its_handle(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await accept(peer)
        await accept(peer)
        await peer.send(Error(code="E_DETACHED", message="job j1 is now followed by another "
                              "connection", job_id="j1"))
        await peer.send(done("j2"))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            detached = await client.submit(job_id="j1", pools=["p"])
            other = await client.submit(job_id="j2", pools=["p"])
            with pytest.raises(RequestFailed) as failed:
                await detached.result()
            assert (failed.value.code, failed.value.job_id) == ("E_DETACHED", "j1")
            assert (await other.result()).ok  # the other job is untouched


async def test_bad_messages_do_not_kill_the_reader_and_pings_are_answered(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        submit = await peer.recv(Submit)
        await peer.send_raw(b"not json")
        await peer.send_raw(b'{"type": "nonsense"}')
        await peer.send_raw(b'{"type": "done", "job_id": ""}')
        await peer.send(Ping(ref="daemon-ping"))
        pong = await peer.recv(Pong)
        assert pong.ref == "daemon-ping"
        await peer.send(Accepted(job_id=submit.job_id or "", state="queued", ref=submit.ref))
        await peer.send(done(submit.job_id or ""))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(pools=["p"])
            assert (await handle.result()).ok


async def test_closing_the_client_fails_waiting_handles(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        await accept(peer)
        await peer.closed.wait()

    nursery.start_soon(script)
    handle: JobHandle | None = None
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(pools=["p"])
        with pytest.raises(RequestFailed) as failed:
            await handle.result()
    assert failed.value.code == "E_CLIENT_CLOSED"


async def test_an_error_in_the_body_is_raised_as_is(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()

    nursery.start_soon(script)
    with trio.fail_after(10), pytest.raises(KeyError):
        async with Client.connect(daemon.url):
            raise KeyError("mine")


async def test_keepalive_pings_the_daemon(daemon: FakeDaemon, nursery: trio.Nursery) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake(heartbeat_interval=0.05)

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url):
            await daemon.peers[0].pinged.wait()


async def test_an_unsupported_url_is_a_value_error() -> None:
    with trio.fail_after(10), pytest.raises(ValueError, match="scheme"):
        async with Client.connect("http://127.0.0.1:1"):
            raise AssertionError("connected over http")
