"""The SDK's ordered sessions against a real daemon (both transports, both stores): results of
jobs that finish out of order reach the session's stream in seq order, and a second client of
the principal (a reconnect) follows the session and gets what waited for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from schedd.protocol import Done, Skipped
from schedd.sdk import E_SKIPPED, Client, JobContext, Node, RequestFailed
from tests.e2e_daemon import DaemonProcess


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_a_session_yields_its_results_in_seq_order(
    tmp_path: Path, store_url: str, transport: str
) -> None:
    gate = trio.Event()

    async def handler(job: JobContext) -> Any:
        # the later a seq, the sooner it finishes: results come back in reverse order
        await trio.sleep(0.02 * job.payload["wait"])
        if job.payload.get("gate"):
            await gate.wait()
        return job.payload["seq"]

    daemon = DaemonProcess(tmp_path, store_url)
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(Node(url, handler, pools=["p"], node_id="n1",
                                         capacity=4).run)
                async with Client.connect(url) as client:
                    session = client.session("call")
                    handles = [await client.submit({"seq": seq, "wait": 4 - seq}, pools=["p"],
                                                   session_id="call", seq=seq,
                                                   job_id=f"u{seq}")
                               for seq in range(4)]
                    got = [await session.next() for _ in range(4)]
                    assert [m.seq for m in got if isinstance(m, Done)] == [0, 1, 2, 3]
                    assert [m.output for m in got if isinstance(m, Done)] == [0, 1, 2, 3]
                    assert [(await h.result()).seq for h in handles] == [0, 1, 2, 3]
                    with pytest.raises(RequestFailed) as refused:
                        await client.submit(None, pools=["p"], session_id="call", seq=2)
                    assert refused.value.code == "E_DUPLICATE_SEQ"
                    # a job for seq 5 waits for seq 4, which never comes: skipped
                    await client.submit({"seq": 5, "wait": 0}, pools=["p"], session_id="call",
                                        seq=5, gap_timeout=0.1)
                    skipped = await session.next()
                    assert isinstance(skipped, Skipped)
                    assert (skipped.from_seq, skipped.to_seq) == (4, 4)
                    assert (await session.next()).seq == 5  # type: ignore[union-attr]
                    assert session.next_seq == 6
                    # a job of this connection that finishes once another client of the
                    # principal (a reconnect) followed the session ...
                    await client.submit({"seq": 6, "wait": 0, "gate": True}, pools=["p"],
                                        session_id="call", seq=6)
                    async with Client.connect(url) as again:
                        with pytest.raises(RequestFailed) as unknown:
                            await again.follow_session("no-such-session")
                        assert unknown.value.code == "E_NO_SESSION"
                        resumed = await again.follow_session("call")
                        gate.set()
                        # ... goes to the follower
                        assert (await resumed.next()).seq == 6  # type: ignore[union-attr]
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_the_handle_of_a_skipped_seq_fails_with_e_skipped(
    tmp_path: Path, store_url: str, transport: str
) -> None:
    gate = trio.Event()

    async def handler(job: JobContext) -> Any:
        if job.payload == 0:
            await gate.wait()  # seq 0 outlasts the gap timeout: the session skips it
        return job.payload

    daemon = DaemonProcess(tmp_path, store_url)
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(Node(url, handler, pools=["p"], capacity=2).run)
                async with Client.connect(url) as client:
                    session = client.session("call")
                    first, second = [
                        await client.submit(seq, pools=["p"], session_id="call", seq=seq,
                                            gap_timeout=0.1)
                        for seq in (0, 1)
                    ]
                    skipped = await session.next()
                    assert isinstance(skipped, Skipped)
                    assert (skipped.from_seq, skipped.to_seq) == (0, 0)
                    with pytest.raises(RequestFailed) as failed:
                        await first.result()
                    assert failed.value.code == E_SKIPPED
                    assert failed.value.job_id == first.job_id
                    assert (await second.result()).output == 1  # the next seq is not touched
                    gate.set()
                    # the skipped job still ends; its outcome is read with status
                    while (await client.status(first.job_id)).state != "done":
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
