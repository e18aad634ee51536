"""End to end: a job the store loses while a client waits for it (Redis flushed, or restarted
without persistence) fails the client's handle with JobLost instead of waiting forever."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from schedd.devtools.redis_process import RedisServer
from schedd.sdk import Client, JobLost
from tests.conftest import _flush
from tests.e2e_daemon import DaemonProcess


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_a_queued_job_lost_by_a_flushed_store_fails_its_handle(
    tmp_path: Path, redis_server: RedisServer, transport: str
) -> None:
    _flush(redis_server.port)
    daemon = DaemonProcess(tmp_path, redis_server.url)
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with Client.connect(url, lost_check_interval=0.2) as client:
                handle = await client.submit({"n": 1}, pools=["nobody"], queue_timeout=600)
                assert handle.state == "queued"
                _flush(redis_server.port)  # what a restart without AOF does to the job
                with pytest.raises(JobLost) as lost:
                    await handle.result()
        assert (lost.value.code, lost.value.job_id) == ("E_NO_JOB", handle.job_id)
    finally:
        daemon.stop()
