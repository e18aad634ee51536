"""A node's progress over either transport extends its attempt's run deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from schedd import protocol as p
from tests.core.test_run_lease import accepted_ago, deadline_of, now_ms
from tests.daemon.test_session import node_holding_a_job, pong


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_progress_over_the_wire_extends_the_run_deadline(
    tmp_path: Path, transport: str,
) -> None:
    toml = "[jobs]\nrun_timeout = 1.0\nmax_run = 3600.0\n"
    async with node_holding_a_job(transport, tmp_path=tmp_path, toml=toml) as (
            d, node, client, assign):
        core = d.app.core
        with trio.fail_after(10):
            await node.send(p.encode(p.Accept(job_id=assign.job_id, attempt=1)))
            assert await pong(node, "accepted") == []
            await accepted_ago(core, assign.job_id, 5000)
            before = await now_ms(core.store)
            await node.send(p.encode(p.Progress(job_id=assign.job_id, attempt=1, data=None)))
            assert await pong(node, "progressed") == []
            assert (await client.expect(p.Progress)).data is None
        assert await deadline_of(core, assign.job_id) >= before + 1000
