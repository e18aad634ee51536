"""Retries, delays and retention fields on the wire: over both transports and both stores."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schedd import protocol as p
from tests.daemon.test_follow import daemon, expect, node_of, send, until_pong, wire


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_retryable_result_backs_off_then_runs_on_another_node(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        n1 = await node_of(d, transport, "n1")
        alice = await wire(d, transport, "client", "alice-secret")
        await send(alice, p.Submit(job_id="j1", pools=["p"], max_attempts=2, backoff_base=0.5,
                                   payload={"audio": "x"}))
        await expect(alice, p.Accepted)
        first = await expect(n1, p.Assign)
        n2 = await node_of(d, transport, "n2")
        await send(n1, p.Accept(job_id="j1", attempt=1),
                   p.Result(job_id="j1", attempt=1, ok=False, retryable=True,
                            error=p.ErrorInfo(code="OOM", message="out of memory")))
        await until_pong(n1)
        await send(alice, p.Status(job_id="j1", ref="st"))
        job = await expect(alice, p.Job)
        # the backoff is 0.25 to 0.5 s: the status, sent at once, finds the job still waiting
        assert job.state == "delayed" and job.attempt == first.attempt
        second = await expect(n2, p.Assign)
        assert (second.attempt, second.payload) == (2, {"audio": "x"})
        await send(n2, p.Accept(job_id="j1", attempt=2),
                   p.Result(job_id="j1", attempt=2, ok=True, output="ok"))
        done = await expect(alice, p.Done)
        assert done.ok and done.attempts == 2 and done.node == "n2"


async def test_a_delayed_submit_waits_and_is_cancelled(store_url: str, transport: str) -> None:
    async with daemon(store_url) as d:
        await node_of(d, transport, "n1")
        alice = await wire(d, transport, "client", "alice-secret")
        bob = await wire(d, transport, "client", "bob-secret")
        await send(alice, p.Submit(job_id="j1", pools=["p"], delay=3600.0, result_ttl=60.0,
                                   keep_payload=True))
        accepted = await expect(alice, p.Accepted)
        assert accepted.state == "delayed"
        await send(bob, p.Cancel(job_id="j1", ref="c"))
        refused = await expect(bob, p.Error)
        assert refused.code == "E_NOT_YOURS"
        await send(alice, p.Cancel(job_id="j1"))
        done = await expect(alice, p.Done)
        assert done.state == "canceled"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"delay": -1}, "E_BAD_FIELD"),
        ({"result_ttl": -5}, "E_BAD_FIELD"),
        ({"backoff_base": 0}, "E_BAD_FIELD"),
        ({"backoff_max": -1.0}, "E_BAD_FIELD"),
        ({"keep_payload": "yes"}, "E_BAD_FIELD"),
        ({"delay": 1e15}, "E_BAD_DELAY"),
        ({"not_before": 9e15}, "E_BAD_DELAY"),
        ({"delay": 1, "not_before": 1}, "E_BAD_DELAY"),
        ({"result_ttl": 1e9}, "E_BAD_TTL"),
        ({"backoff_base": 10, "backoff_max": 1}, "E_BAD_ARG"),
    ],
)
async def test_hostile_lifecycle_fields_are_refused(
    store_url: str, transport: str, fields: dict[str, Any], code: str,
) -> None:
    async with daemon(store_url) as d:
        alice = await wire(d, transport, "client", "alice-secret")
        await alice.send(orjson.dumps({"type": "submit", "job_id": "j1", "pools": ["p"],
                                       "ref": "s", **fields}))
        error = await expect(alice, p.Error)
        assert error.code == code
        if code == "E_BAD_FIELD":  # refused as it is decoded: named by its field, not its ref
            assert next(iter(fields)) in error.message
        else:
            assert error.ref == "s" and error.job_id == "j1"
        await send(alice, p.Status(job_id="j1", ref="st"))
        assert (await expect(alice, p.Error)).code == "E_NO_JOB"


async def test_a_result_with_a_bad_retryable_is_refused(store_url: str, transport: str) -> None:
    async with daemon(store_url) as d:
        n1 = await node_of(d, transport, "n1")
        await n1.send(orjson.dumps({"type": "result", "job_id": "j1", "attempt": 1, "ok": False,
                                    "error": {"code": "X", "message": ""}, "retryable": 1,
                                    "ref": "r"}))
        error = await expect(n1, p.Error)
        assert error.code == "E_BAD_FIELD" and "retryable" in error.message
