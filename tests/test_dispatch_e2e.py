"""End to end, both transports, both stores: a queued job reaches its node when the node's
unavailability mark ends; throw-away pools leave the pools listing; a principal's pools with
no member are bounded (``[jobs] max_created_pools``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from schedd.sdk import Client, JobContext, Node, RequestFailed
from tests.e2e_daemon import DaemonProcess


async def echo(ctx: JobContext) -> Any:
    return ctx.payload


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_marks_and_pools_over_the_wire(
    tmp_path: Path, store_url: str, transport: str
) -> None:
    daemon = DaemonProcess(tmp_path, store_url, extra="[jobs]\nmax_created_pools = 2\n")
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                node = Node(url, echo, pools=["p"], node_id="n1")
                await nursery.start(node.run)
                async with Client.connect(url) as client:
                    # the mark reaches the daemon on the node's connection: submit until a job
                    # needing the service queues (the idle node's mark is the only reason)
                    await node.mark_unavailable("tts", 1.0)
                    while True:
                        handle = await client.submit("tts", pools=["p"], services=["tts"])
                        if handle.state == "queued":
                            break
                        await handle.result()
                    # nothing else is submitted and no slot frees: the mark's end hands it over
                    done = await handle.result()
                    assert done.ok and done.node == "n1"

                    # two throw-away pools are this principal's limit; a third is refused
                    waiting = [await client.submit(i, pools=[f"junk-{i}"], queue_timeout=0.3)
                               for i in range(2)]
                    with pytest.raises(RequestFailed) as refused:
                        await client.submit(2, pools=["junk-2"])
                    assert refused.value.code == "E_QUEUE_FULL"
                    assert "limit 2" in str(refused.value)
                    for handle in waiting:
                        assert (await handle.result()).state == "timed_out"
                    # their pools are gone from the listing, and from the principal's count
                    pools = await client.query("pools")
                    assert [pool["pool"] for pool in pools["pools"]] == ["p"]
                    await client.submit(2, pools=["junk-2"], queue_timeout=0.3)
                nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
