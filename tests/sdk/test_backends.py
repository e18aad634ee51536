"""The SDK under asyncio and trio alike, against the real daemon over real sockets.

The daemon (trio) runs in a thread of its own (tests/sdk/daemon_thread.py); each test runs once
per event loop (anyio's pytest plugin, ``anyio_backend``) and per store (``store_url``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from schedd.protocol import Hello, Welcome, decode, encode
from schedd.sdk import Client, ConnectFailed, JobContext, Node, RequestFailed, open_channel
from tests.plugins import make_tls_files
from tests.sdk import closed_port_url
from tests.sdk.daemon_thread import DaemonThread

pytestmark = pytest.mark.anyio

TIMEOUT = 20


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def daemon(store_url: str, tmp_path: Path) -> Iterator[DaemonThread]:
    with DaemonThread(store_url, tmp_path) as running:
        yield running


@pytest.fixture(params=["ws", "tcp"])
def url(request: pytest.FixtureRequest, daemon: DaemonThread) -> str:
    return daemon.ws if request.param == "ws" else daemon.tcp


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await anyio.sleep(0.01)


def echo(node_id: str) -> Callable[[JobContext], Any]:
    async def handler(ctx: JobContext) -> Any:
        for step in range(3):
            await ctx.progress({"step": step})
        return {"echo": ctx.payload, "node": node_id}

    return handler


async def test_submit_progress_result(url: str, anyio_backend: str) -> None:
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(Node(url, echo("n1"), pools=["p"], node_id="n1").run)
            async with Client.connect(url) as client:
                # under asyncio the SDK's own channels, under trio the daemon's transport's
                assert client._link is not None
                module = type(client._link._channel).__module__
                trio_module = "websocket" if url.startswith("ws") else "stream"
                assert module == ("schedd.sdk.aio_channel" if anyio_backend == "asyncio"
                                  else f"schedd.transport.{trio_module}")
                handle = await client.submit({"loop": anyio_backend}, pools=["p"])
                steps = [data async for data in handle.progress()]
                done = await handle.result()
                assert done.ok and done.output == {"echo": {"loop": anyio_backend}, "node": "n1"}
                assert steps == [{"step": 0}, {"step": 1}, {"step": 2}]
                assert (await client.status(handle.job_id)).state == "done"
                assert (await client.query("stats"))["counts"]["done"] == 1
            tg.cancel_scope.cancel()


async def test_follow_from_another_client(daemon: DaemonThread) -> None:
    release = anyio.Event()

    async def handler(ctx: JobContext) -> Any:
        await release.wait()
        return "late"

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(Node(daemon.tcp, handler, pools=["p"]).run)
            async with Client.connect(daemon.ws) as first, Client.connect(daemon.tcp) as second:
                handle = await first.submit(pools=["p"])
                followed = await second.follow(handle.job_id)
                with pytest.raises(RequestFailed) as detached:
                    await handle.result()
                assert detached.value.code == "E_DETACHED"
                release.set()
                assert (await followed.result()).output == "late"
            tg.cancel_scope.cancel()


async def test_dropped_connections_reconnect_and_resume(url: str) -> None:
    release = anyio.Event()

    async def handler(ctx: JobContext) -> Any:
        await ctx.progress("started")
        await release.wait()
        return {"attempt": ctx.attempt}

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            node = Node(url, handler, pools=["p"], node_id="n1", reconnect_delay=0.01)
            await tg.start(node.run)
            async with Client.connect(url) as client:
                handle = await client.submit(pools=["p"])
                assert await handle.progress().__anext__() == "started"
                epoch = node.epoch or 0
                # Both connections drop while the job runs; both come back on their own.
                assert node._link is not None and client._link is not None
                await node._link.aclose()
                await client._link.aclose()
                await until(lambda: (node.epoch or 0) > epoch and client._link is not None)
                assert list(node.running) == [handle.job_id]
                release.set()
                done = await handle.result()
                assert done.ok and done.output == {"attempt": 1} and done.attempts == 1
            tg.cancel_scope.cancel()


async def test_failover_to_the_next_url(daemon: DaemonThread) -> None:
    dead = closed_port_url()
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(Node([dead, daemon.ws], echo("n1"), pools=["p"], node_id="n1").run)
            async with Client.connect([dead, daemon.tcp]) as client:
                assert client._link is not None and client._link.url == daemon.tcp
                done = await (await client.submit(1, pools=["p"])).result()
                assert done.ok and done.output == {"echo": 1, "node": "n1"}
            tg.cancel_scope.cancel()
    with anyio.fail_after(TIMEOUT), pytest.raises(ConnectFailed):
        async with Client.connect([dead]):
            pass


async def test_a_resubmitted_job_id_is_the_same_job(url: str) -> None:
    runs: list[str] = []

    async def handler(ctx: JobContext) -> Any:
        runs.append(ctx.job_id)
        return len(runs)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            await tg.start(Node(url, handler, pools=["p"]).run)
            async with Client.connect(url) as client:
                first = await client.submit("x", pools=["p"], job_id="job-1")
                assert not first.duplicate
                assert (await first.result()).output == 1
                again = await client.submit("x", pools=["p"], job_id="job-1")
                assert again.duplicate
                assert (await again.result()).output == 1
            tg.cancel_scope.cancel()
    assert runs == ["job-1"]


async def test_cancel_stops_the_handler(url: str) -> None:
    started = anyio.Event()
    stopped: list[bool] = []

    async def handler(ctx: JobContext) -> Any:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            stopped.append(ctx.cancelled)

    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            node = Node(url, handler, pools=["p"])
            await tg.start(node.run)
            async with Client.connect(url) as client:
                handle = await client.submit(pools=["p"])
                await started.wait()
                await handle.cancel()
                done = await handle.result()
                assert done.state == "canceled" and not done.ok
                await until(lambda: bool(stopped))
                assert stopped == [True] and not node.running
            tg.cancel_scope.cancel()


async def test_a_draining_node_rejects_and_another_accepts(
    daemon: DaemonThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="schedd.sdk.node")
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            busy = Node(daemon.ws, echo("busy"), pools=["p"], node_id="busy")
            await tg.start(busy.run)
            busy.draining = True  # rejects every assign, as after the daemon's drain
            async with Client.connect(daemon.tcp) as client:
                handle = await client.submit(pools=["p"])
                await tg.start(Node(daemon.tcp, echo("free"), pools=["p"], node_id="free").run)
                done = await handle.result()
                assert done.ok and done.node == "free"
            tg.cancel_scope.cancel()
    assert f"rejecting job {handle.job_id} attempt 1: draining" in caplog.text


async def test_wss_and_tls(store_url: str, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    with DaemonThread(store_url, tmp_path, tls=tls) as daemon:
        assert daemon.ws.startswith("wss://") and daemon.tcp.startswith("tls://")
        with anyio.fail_after(TIMEOUT):
            with pytest.raises(ConnectFailed, match="certificate not accepted"):
                async with Client.connect(daemon.ws):
                    pass
            async with anyio.create_task_group() as tg:
                node = Node(daemon.tcp + "?insecure=1", echo("n1"), pools=["p"], node_id="n1")
                await tg.start(node.run)
                async with Client.connect(daemon.ws + "?insecure=1") as client:
                    done = await (await client.submit("secret", pools=["p"])).result()
                    assert done.output == {"echo": "secret", "node": "n1"}
                async with open_channel(daemon.ws, ssl_context=tls.client_context) as channel:
                    await channel.send(encode(Hello(role="client", version=1)))
                    assert isinstance(decode(await channel.receive()), Welcome)
                tg.cancel_scope.cancel()
