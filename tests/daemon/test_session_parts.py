"""The pure parts of a session: the state table, deliveries as wire messages, errors as codes."""

from __future__ import annotations

import orjson
import pytest

from schedd import protocol as p
from schedd.core import (
    AssignDelivery,
    CancelJob,
    Detach,
    DoneDelivery,
    DrainNode,
    ProgressDelivery,
)
from schedd.errors import (
    Fenced,
    NodeNotFound,
    ProtocolError,
    StaleAttempt,
    StoreResponseError,
    StoreUnavailable,
)
from schedd.session import Session
from schedd.session.deliveries import wire_message
from schedd.session.errors import answer
from schedd.session.handshake import CLIENT, HANDLERS, HELLO, NODE


def test_the_state_table_allows_what_the_protocol_lets_each_role_send() -> None:
    # ping and pong are answered in every role state; hello only before the welcome
    assert set(HANDLERS[HELLO]) == {"hello"}
    assert set(HANDLERS[NODE]) == p.NODE_SENDS - {"hello", "ping", "pong"}
    assert set(HANDLERS[CLIENT]) == p.CLIENT_SENDS - {"hello", "ping", "pong"}
    for kinds in HANDLERS.values():
        for name in kinds.values():
            assert callable(getattr(Session, name)), name


def test_deliveries_become_their_wire_messages() -> None:
    assign = wire_message(AssignDelivery(node_id="n1", job_id="j1", attempt=2,
                                         payload_json='{"x":1}', session_id="s",
                                         deadline_ms=5, epoch=3))
    assert isinstance(assign, p.Assign)
    assert p.decode(p.encode(assign)) == p.Assign(job_id="j1", attempt=2, deadline=5,
                                                  session_id="s", payload={"x": 1})
    progress = wire_message(ProgressDelivery(job_id="j1", attempt=2, data_json="[1]"))
    assert isinstance(progress, p.Progress)
    assert orjson.loads(p.encode(progress))["data"] == [1]
    assert wire_message(CancelJob(node_id="n1", job_id="j1", attempt=2, reason="r")) == \
        p.Cancel(job_id="j1", attempt=2)
    assert wire_message(DrainNode(node_id="n1", reason="")) == p.Drain(reason=None)
    assert wire_message(Detach(job_id="j1", principal="a", follows=1)) is None


@pytest.mark.parametrize(("state", "ok", "error", "code", "wire_ok"), [
    ("done", True, None, None, True),
    ("failed", False, {"code": "E_X", "message": "boom"}, "E_X", False),
    ("timed_out", False, None, "E_FAILED", False),
])
def test_a_done_delivery_becomes_done(
    state: str, ok: bool, error: dict[str, str] | None, code: str | None, wire_ok: bool,
) -> None:
    done = wire_message(DoneDelivery(job_id="j1", state=state, ok=ok, output_json="",
                                     error=error, node="n1", attempts=1,
                                     timings={"queued": 1, "started": 0}))
    assert isinstance(done, p.Done)
    assert done.ok is wire_ok and done.output is None and done.timings == {"queued": 1}
    assert (done.error.code if done.error else None) == code


def _answer(exc: Exception, role: str = "node", job_id: str | None = None) -> tuple[str, bool,
                                                                                    bool]:
    reply = answer(exc, p.Ping(ref="r"), role, "peer", job_id)
    return reply.code, reply.violation, reply.close


def test_failures_map_to_wire_codes() -> None:
    assert _answer(ProtocolError(p.E_ROLE, "x")) == (p.E_ROLE, True, False)
    assert _answer(ProtocolError("E_BAD_ARG", "x")) == ("E_BAD_ARG", False, False)
    assert _answer(StoreUnavailable("down")) == (p.E_UNAVAILABLE, False, False)
    assert _answer(StaleAttempt("old"), job_id="j1") == ("E_STALE_ATTEMPT", False, False)
    # a node connection that no longer speaks for its node ends; a client's does not
    assert _answer(Fenced("gone")) == ("E_FENCED", False, True)
    assert _answer(NodeNotFound("gone"), role="client")[2] is False
    assert _answer(StoreResponseError("ERR wrong")) == (p.E_INTERNAL, False, False)
    try:
        raise KeyError("bug")
    except KeyError as exc:
        assert _answer(exc) == (p.E_INTERNAL, False, False)
