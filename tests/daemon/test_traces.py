"""A job's W3C trace context: given at submit or made by the daemon, it travels to the node in
``assign``, comes back in ``accepted``, ``job`` and ``done``, and ends every flow log line about
the job (docs/protocol.md, "Trace context"); over both transports and both stores."""

from __future__ import annotations

import logging
import re

import orjson
import pytest

from schedd import protocol as p
from tests.daemon.test_follow import (
    Wire,
    daemon,
    expect,
    node_and_clients,
    node_of,
    send,
    submitted,
    until_pong,
    wire,
)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
#: what the daemon makes: version 00, random ids, sampled
MADE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def run_to_done(client: Wire, node: Wire, assign: p.Assign) -> p.Done:
    await send(node, p.Accept(job_id=assign.job_id, attempt=assign.attempt),
               p.Result(job_id=assign.job_id, attempt=assign.attempt, ok=True, output=1))
    await until_pong(node)
    done: p.Done = await expect(client, p.Done)
    return done


async def test_a_given_trace_context_travels_to_the_node_and_back(
    store_url: str, transport: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="schedd.session")
    async with node_and_clients(store_url, transport, "alice-secret") as (node, (alice,)):
        await send(alice, p.Submit(job_id="j1", pools=["p"], traceparent=TRACEPARENT,
                                   tracestate=TRACESTATE, ref="s"))
        accepted = await expect(alice, p.Accepted)
        assert (accepted.traceparent, accepted.tracestate) == (TRACEPARENT, TRACESTATE)
        assign = await expect(node, p.Assign)
        assert (assign.traceparent, assign.tracestate) == (TRACEPARENT, TRACESTATE)
        await send(alice, p.Status(job_id="j1", ref="st"))
        job = await expect(alice, p.Job)
        assert (job.traceparent, job.tracestate) == (TRACEPARENT, TRACESTATE)
        done = await run_to_done(alice, node, assign)
        assert (done.traceparent, done.tracestate) == (TRACEPARENT, TRACESTATE)
        # a duplicate submit answers with the job's own context, not a new one
        await send(alice, p.Submit(job_id="j1", pools=["p"]))
        again = await expect(alice, p.Accepted)
        assert again.duplicate and again.traceparent == TRACEPARENT
    lines = [r for r in caplog.records if "job j1" in r.getMessage()]
    said = " / ".join(r.getMessage() for r in lines)
    for step in ("submitted", "assigned to node n1", "running on node n1", "succeeded on node",
                 "done sent"):
        assert step in said, said
    assert {getattr(r, "trace", None) for r in lines} == {TRACE_ID}


async def test_a_job_without_one_gets_one_made_by_the_daemon(
    store_url: str, transport: str,
) -> None:
    async with node_and_clients(store_url, transport, "alice-secret") as (node, (alice,)):
        await send(alice, p.Submit(job_id="j1", pools=["p"]))
        accepted = await expect(alice, p.Accepted)
        assert accepted.traceparent is not None and MADE.fullmatch(accepted.traceparent)
        assert accepted.tracestate is None
        assign = await expect(node, p.Assign)
        assert assign.traceparent == accepted.traceparent
        done = await run_to_done(alice, node, assign)
        assert done.traceparent == accepted.traceparent
        await send(alice, p.Submit(job_id="j2", pools=["p"]))
        other = await expect(alice, p.Accepted)
        assert other.traceparent is not None
        assert p.trace_id(other.traceparent) != p.trace_id(accepted.traceparent)


MALFORMED: list[tuple[dict[str, object], str]] = [
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"}, "traceparent"),
    ({"traceparent": TRACEPARENT.upper()}, "traceparent"),
    ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, "traceparent"),
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01"}, "traceparent"),
    ({"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, "traceparent"),
    ({"traceparent": TRACEPARENT + "-extra"}, "traceparent"),
    ({"traceparent": "01-" + TRACEPARENT[3:] + "-" + "x" * 200}, "traceparent"),
    ({"traceparent": 7}, "traceparent"),
    ({"tracestate": "a=1"}, "tracestate"),
    ({"traceparent": TRACEPARENT, "tracestate": "Upper=1"}, "tracestate"),
    ({"traceparent": TRACEPARENT, "tracestate": "a=" + "x" * 600}, "tracestate"),
    ({"traceparent": TRACEPARENT, "tracestate": ",".join(f"k{i}=v" for i in range(33))},
     "tracestate"),
]


async def test_a_malformed_trace_context_is_refused_naming_the_field(
    store_url: str, transport: str,
) -> None:
    async with daemon(store_url) as d:
        node = await node_of(d, transport)
        for index, (fields, named) in enumerate(MALFORMED):
            # a connection per case: repeated violations close a connection
            alice = await wire(d, transport, "client", "alice-secret")
            await alice.send(orjson.dumps({"type": "submit", "job_id": f"j{index}",
                                           "pools": ["p"], "ref": "s", **fields}))
            error = await expect(alice, p.Error)
            assert error.code == p.E_BAD_FIELD, (fields, error)
            assert f"$.{named}" in error.message, (fields, error.message)
            await send(alice, p.Status(job_id=f"j{index}"))
            assert (await expect(alice, p.Error)).code == "E_NO_JOB"  # nothing was stored
        assert await until_pong(node) == []
        # a later version's extra fields are kept as they are
        later = "01-" + TRACEPARENT[3:] + "-what-comes-next"
        await send(alice, p.Submit(job_id="later", pools=["p"], traceparent=later))
        assert (await expect(alice, p.Accepted)).traceparent == later


async def test_another_principal_cannot_read_a_jobs_trace_context(
    store_url: str, transport: str,
) -> None:
    """The trace context is the job owner's: status and follow of another principal's job are
    refused, so it leaks through neither."""
    async with node_and_clients(store_url, transport, "alice-secret", "bob-secret") as (
            node, (alice, bob)):
        await submitted(alice, node, "j1", traceparent=TRACEPARENT)
        await send(bob, p.Status(job_id="j1"), p.Follow(job_id="j1"),
                   p.Submit(job_id="j1", pools=["p"], traceparent=TRACEPARENT))
        got = await until_pong(bob)
        assert [(type(m), getattr(m, "code", None)) for m in got] == [
            (p.Error, "E_NOT_YOURS")] * 3, got
        assert not any(TRACE_ID in repr(m) for m in got)
