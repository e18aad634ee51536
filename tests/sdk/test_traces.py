"""The SDK's side of a job's trace context against a real daemon (both transports, both stores):
the client gives a traceparent and reads the job's back, the node's handler sees it, and the
daemon's flow log names the trace id on every line about the job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from schedd.sdk import Client, JobContext, Node
from tests.e2e_daemon import DaemonProcess
from tests.polling import until

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_the_trace_context_reaches_the_handler_and_the_log(
    tmp_path: Path, store_url: str, transport: str
) -> None:
    seen: list[dict[str, str]] = []

    async def handler(job: JobContext) -> Any:
        seen.append(job.trace)
        return job.traceparent

    daemon = DaemonProcess(tmp_path, store_url, extra="[schedd]\nlog_level = \"debug\"\n")
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(Node(url, handler, pools=["p"], node_id="n1").run)
                async with Client.connect(url) as client:
                    given = await client.submit("x", pools=["p"], job_id="traced",
                                                traceparent=TRACEPARENT, tracestate="k=v")
                    assert (given.traceparent, given.tracestate) == (TRACEPARENT, "k=v")
                    assert (await given.result()).output == TRACEPARENT
                    made = await client.submit("y", pools=["p"], job_id="untraced")
                    assert made.traceparent is not None and made.traceparent != TRACEPARENT
                    assert (await made.result()).output == made.traceparent
                nursery.cancel_scope.cancel()
        assert seen == [{"traceparent": TRACEPARENT, "tracestate": "k=v"},
                        {"traceparent": made.traceparent}]
        # the node's result is logged once its call returns, maybe after the done went out
        await until(lambda: "job traced attempt 1 succeeded" in daemon.output())
        lines = [line for line in daemon.output().splitlines() if "job traced " in line]
        assert len(lines) >= 4, lines  # submitted, assigned, running, succeeded, done sent
        assert all(line.endswith(f"trace={TRACE_ID}") for line in lines), lines
    finally:
        daemon.stop()
