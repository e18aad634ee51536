"""The client SDK honours E_RATE_LIMITED: it waits the daemon's retry_after and submits again,
within its bounds (against the scripted fake daemon, on both transports; and the blocking client
against a real daemon, on both stores)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from schedd.devtools.redis_process import free_port
from schedd.protocol import Error, Submit
from schedd.sdk import BlockingClient
from schedd.sdk.client import Client, RequestFailed
from tests.sdk import FakeDaemon, start_fake_daemon
from tests.sdk.test_blocking import WAIT, DaemonThread
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


class RateLimitedDaemon(DaemonThread):
    """A real daemon (tcp) whose principals may submit 4 jobs a second, 1 at once."""

    def _run(self) -> None:
        self._toml += "[quotas]\nsubmit_rate = 4.0\nsubmit_burst = 1\n"
        super()._run()


@pytest.fixture
def limited_daemon(tmp_path: Path, store_url: str) -> Iterator[RateLimitedDaemon]:
    started = RateLimitedDaemon(tmp_path, store_url, free_port(), pools=["p"])
    try:
        yield started
    finally:
        started.stop()


def test_blocking_client_waits_out_the_rate_of_a_real_daemon(
    limited_daemon: RateLimitedDaemon,
) -> None:
    with BlockingClient(limited_daemon.url) as client:
        handles = [client.submit({"n": i}, pools=["p"]) for i in range(3)]
        assert all(h.result(timeout=WAIT).ok for h in handles)
        (mine,) = client.query("usage")["usage"]
        assert mine["refused"].get("E_RATE_LIMITED", 0) >= 1
        assert (mine["in_flight"], mine["queued"], mine["payload_bytes"]) == (0, 0, 0)
    time.sleep(0.3)  # one token back (4/s): the next submit is taken
    with BlockingClient(limited_daemon.url, rate_limited_retries=0) as client:
        client.submit(pools=["p"])
        with pytest.raises(RequestFailed) as info:
            client.submit(pools=["p"])
        assert info.value.code == "E_RATE_LIMITED"
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 0.25
