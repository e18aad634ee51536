"""The client SDK honours E_RATE_LIMITED: it waits the daemon's retry_after and submits again,
within its bounds (against the scripted fake daemon, on both transports)."""

from __future__ import annotations

import pytest
import trio

from schedd.protocol import Error, Submit
from schedd.sdk.client import Client, RequestFailed
from tests.sdk import FakeDaemon, start_fake_daemon
from tests.sdk.test_client import accept


@pytest.fixture(params=["tcp", "ws"])
async def daemon(request: pytest.FixtureRequest, nursery: trio.Nursery) -> FakeDaemon:
    return await start_fake_daemon(nursery, websocket=request.param == "ws")


def limited(submit: Submit, ms: int = 20) -> Error:
    return Error(code="E_RATE_LIMITED", message=f"submit rate over 5/s; retry_after_ms={ms}",
                 job_id=submit.job_id, ref=submit.ref)


async def test_rate_limited_submit_is_retried_after_the_wait(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    sent: list[Submit] = []

    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        for _ in range(2):
            submit = await peer.recv(Submit)
            sent.append(submit)
            await peer.send(limited(submit))
        sent.append(await accept(peer))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            handle = await client.submit(pools=["p"])
    assert handle.state == "queued"
    assert len({s.job_id for s in sent}) == 1 and len(sent) == 3  # the same job, sent again


async def test_rate_limited_past_the_retries_raises(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        for _ in range(2):
            submit = await peer.recv(Submit)
            await peer.send(limited(submit))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url, rate_limited_retries=1) as client:
            with pytest.raises(RequestFailed) as info:
                await client.submit(pools=["p"])
    assert info.value.code == "E_RATE_LIMITED" and info.value.retry_after == 0.02


async def test_a_wait_longer_than_the_bound_raises_at_once(
    daemon: FakeDaemon, nursery: trio.Nursery
) -> None:
    async def script() -> None:
        peer = await daemon.accept()
        await peer.handshake()
        submit = await peer.recv(Submit)
        await peer.send(limited(submit, ms=3_600_000))

    nursery.start_soon(script)
    with trio.fail_after(10):
        async with Client.connect(daemon.url) as client:
            with pytest.raises(RequestFailed) as info:
                await client.submit(pools=["p"])
    assert info.value.retry_after == 3600.0
