"""The example plugin tests itself with ``schedd.testing``, as a team's plugin would."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import trio

from schedd import protocol as p
from schedd.testing import FakeDaemon, running_daemon


def _toml(journal: Path) -> str:
    return (f'[plugins]\nenabled = ["example"]\n'
            f'[plugins.example]\nteam = "vision"\njournal = "{journal}"\n')


async def test_pools_are_prefixed_and_events_journalled(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    with trio.fail_after(10):
        async with running_daemon(toml=_toml(journal), tmp_path=tmp_path) as harness:
            node, registered = await harness.node("gpu", node_id="g1")
            assert registered.pools == ["vision/gpu"]
            client = await harness.client()
            await client.send(p.Submit(ref="s", payload="x", pools=["gpu"]))
            accepted = await client.expect(p.Accepted)
            assign = await node.expect(p.Assign)
            await node.send(p.Accept(job_id=assign.job_id, attempt=assign.attempt))
            await node.send(p.Result(job_id=assign.job_id, attempt=assign.attempt, ok=True))
            await client.expect(p.Done)
            while f'"job_id": "{accepted.job_id}", "state": "done"' not in (
                journal.read_text() if journal.exists() else ""
            ):
                await trio.sleep(0.01)
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert events[0] == {"event": "service_started", "team": "vision"}
    assert {"event": "node_registered", "node_id": "g1", "pools": ["vision/gpu"]} in events


def test_its_services_need_no_running_daemon() -> None:
    # imported by name: the package is installed (pip install -e tests/example_plugin), and
    # mypy reads this folder as part of `tests`
    example = importlib.import_module("schedd_example_plugin")
    assert example.schedd_services(FakeDaemon()) == [example._journal]
