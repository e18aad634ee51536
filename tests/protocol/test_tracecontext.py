"""W3C Trace Context rules (schedd.protocol.tracecontext), on the recommendation's examples."""

from __future__ import annotations

import pytest

from schedd import protocol as p
from schedd.protocol.tracecontext import traceparent_problem, tracestate_problem

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_made_traceparent_is_valid_sampled_and_new_each_time() -> None:
    made = {p.new_traceparent() for _ in range(100)}
    assert len(made) == 100
    for traceparent in made:
        assert traceparent_problem(traceparent) is None
        assert traceparent.startswith("00-") and traceparent.endswith("-01")


@pytest.mark.parametrize("tracestate", [
    None, "rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    "a=1 , b=2", "a=1,,b=2", "tenant@vendor=x", "k=v with spaces",
])
def test_the_store_text_round_trips(tracestate: str | None) -> None:
    if tracestate is not None:
        assert tracestate_problem(tracestate) is None
    text = p.join_trace(TRACEPARENT, tracestate)
    assert p.split_trace(text) == (TRACEPARENT, tracestate)
    assert p.trace_id(TRACEPARENT) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_job_stored_without_one_has_none() -> None:
    assert p.split_trace("") == (None, None)


@pytest.mark.parametrize("tracestate", ["=v", "k=", "k=a,b", "k=v=w", "K=v", "k=\x01"])
def test_malformed_tracestate_members(tracestate: str) -> None:
    assert tracestate_problem(tracestate) is not None
