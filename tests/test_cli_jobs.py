"""``schedd jobs`` with filters (a listing, paged) and ``schedd job`` with its attempts."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import schedd.cli.client as cli_client
from schedd import cli
from schedd.protocol import Job

ROW = {"job_id": "j2", "state": "failed", "principal": "token:1", "node": "gpu-box-7",
       "pools": ["zh>en"], "attempt": 3, "max_attempts": 3, "submitted_ms": 1700000000000,
       "finished_ms": 1700000001000, "error": "E_ATTEMPTS"}


class PagingClient:
    """Answers ``query jobs`` with two pages and records the filters of each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.job: Job | None = None

    async def query(self, what: str, **filters: Any) -> dict[str, Any]:
        assert what == "jobs"
        self.calls.append(filters)
        if filters.get("cursor") is None:
            return {"jobs": [ROW], "cursor": "1700000000000.1"}
        return {"jobs": [{**ROW, "job_id": "j1", "node": None, "error": None}], "cursor": None}

    async def status(self, job_id: str) -> Job:
        assert self.job is not None
        return self.job


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> PagingClient:
    fake = PagingClient()

    def run_client(args: argparse.Namespace, body: Callable[[PagingClient], Awaitable[Any]],
                   *, reconnect: bool = False) -> Any:
        return trio.run(body, fake)

    monkeypatch.setattr(cli_client, "_run_client", run_client)
    return fake


def test_filters_become_the_query_and_one_page_prints_its_cursor(
    client: PagingClient, capsys: pytest.CaptureFixture[str]
) -> None:
    before = int(time.time() * 1000)
    assert cli.main(["jobs", "--state", "failed", "--since", "10m", "--pool", "zh>en",
                     "--limit", "20"]) == 0
    (call,) = client.calls
    assert call["state"] == "failed" and call["pool"] == "zh>en" and call["limit"] == 20
    assert before - 600_000 <= call["since"] <= int(time.time() * 1000) - 600_000
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["JOB", "STATE", "NODE", "POOLS", "ATTEMPT", "SUBMITTED",
                                "FINISHED", "ERROR"]
    assert lines[1].split() == ["j2", "failed", "gpu-box-7", "zh>en", "3/3",
                                "2023-11-14T22:13:20.000Z", "2023-11-14T22:13:21.000Z",
                                "E_ATTEMPTS"]
    assert lines[-1] == "more: --cursor 1700000000000.1"


def test_all_follows_every_page(client: PagingClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["jobs", "--all", "--json", "--node", "gpu-box-7"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [j["job_id"] for j in data["jobs"]] == ["j2", "j1"] and data["cursor"] is None
    assert [c.get("cursor") for c in client.calls] == [None, "1700000000000.1"]
    assert cli.main(["jobs", "--cursor", "1700000000000.1"]) == 0
    out = capsys.readouterr().out
    assert "j1" in out and "more:" not in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--limit", "501"], "limit"),
    (["--limit", "0"], "limit"),
    (["--since", "yesterday"], "--since"),
    (["--since", "1h", "--until", "2h"], "until"),
    (["--cursor", "nope"], "cursor"),
])
def test_bad_filters_are_usage_errors(
    client: PagingClient, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(["jobs", *argv]) == 2
    assert message in capsys.readouterr().err
    assert client.calls == []


def test_bad_state_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["jobs", "--state", "exploded"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_job_shows_its_attempts(client: PagingClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.job = Job(job_id="j1", state="done", attempt=2, node="n2", info={
        "max_attempts": 3, "payload_bytes": 12, "output_bytes": 40,
        "attempts": [
            {"attempt": 1, "node": "n1", "outcome": "rejected", "reason": "rejected by n1: busy",
             "assigned_ms": 1700000000000, "accepted_ms": 0, "ended_ms": 1700000000100},
            {"attempt": 2, "node": "n2", "outcome": "done", "reason": "",
             "assigned_ms": 1700000000100, "accepted_ms": 1700000000200,
             "ended_ms": 1700000000900},
        ],
    })
    assert cli.main(["job", "j1"]) == 0
    out = capsys.readouterr().out
    assert "payload_bytes  12" in out and "output_bytes   40" in out
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["ATTEMPT", "NODE", "OUTCOME", "ASSIGNED", "ACCEPTED", "ENDED",
                                "REASON"]
    assert table[1].split()[:3] == ["1", "n1", "rejected"] and table[1].endswith("busy")
    assert table[2].split() == ["2", "n2", "done", "2023-11-14T22:13:20.100Z",
                                "2023-11-14T22:13:20.200Z", "2023-11-14T22:13:20.900Z", "-"]
