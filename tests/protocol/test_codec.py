"""The codec: every message round-trips, and no input makes decode raise anything but ProtocolError.

Holds the hypothesis strategies for messages (one per class) and one example of every message.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schedd.protocol
from schedd.errors import SCRIPT_ERRORS, ProtocolError
from schedd.protocol import (
    CLIENT_SENDS,
    DAEMON_SENDS,
    E_BAD_FIELD,
    E_MALFORMED,
    E_UNKNOWN_TYPE,
    ERROR_CODES,
    JOB_STATES,
    MAX_CAPACITY,
    MAX_DEPTH,
    MAX_ID_LEN,
    MAX_INT,
    MAX_LIST,
    MAX_PRIORITY,
    MAX_SECONDS,
    MESSAGE_TYPES,
    NODE_SENDS,
    PROTOCOL_VERSION,
    QUERY_SUBJECTS,
    TERMINAL_STATES,
    Accept,
    Accepted,
    Answer,
    Assign,
    Cancel,
    Done,
    Drain,
    Error,
    ErrorInfo,
    Follow,
    Heartbeat,
    Hello,
    InvalidField,
    Job,
    Message,
    Ping,
    Pong,
    Progress,
    Query,
    Register,
    Registered,
    Reject,
    Result,
    RunningJob,
    Status,
    Submit,
    Unavailable,
    Welcome,
    decode,
    encode,
)
from schedd.protocol.codec import _OMITTED_WHEN_DEFAULT, converter

# Printable text without controls or surrogates: what an id may contain.
ids = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=MAX_ID_LEN)
short_ids = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=12)
opt_ids = st.none() | ids
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=50)
opt_texts = st.none() | texts
attempts = st.integers(1, MAX_INT)
counts = st.integers(0, MAX_INT)
positive = st.floats(min_value=0.001, max_value=1e9, allow_nan=False, allow_infinity=False)
durations = st.floats(min_value=0.001, max_value=MAX_SECONDS)
opt_durations = st.none() | durations
non_negative = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(short_ids, json_values, max_size=5)
name_lists = st.lists(short_ids, max_size=5)
error_infos = st.builds(ErrorInfo, code=short_ids, message=texts)


def _result(draw: st.DrawFn) -> Result:
    ok = draw(st.booleans())
    return Result(
        job_id=draw(ids),
        attempt=draw(attempts),
        ok=ok,
        output=draw(json_values),
        error=None if ok else draw(error_infos),
        ref=draw(opt_ids),
    )


def _stage_done(draw: st.DrawFn) -> schedd.protocol.StageDone:
    state = draw(st.sampled_from(sorted(TERMINAL_STATES)))
    ok = state == "done"
    return schedd.protocol.StageDone(
        job_id=draw(ids), stage=draw(ids), branch=draw(opt_ids), index=draw(counts),
        state=state,  # type: ignore[arg-type]
        ok=ok, output=draw(json_values), error=None if ok else draw(st.none() | error_infos),
        ref=draw(opt_ids),
    )


def _done(draw: st.DrawFn) -> Done:
    state = draw(st.sampled_from(sorted(TERMINAL_STATES)))
    ok = state == "done"
    return Done(
        job_id=draw(ids),
        state=state,  # type: ignore[arg-type]
        ok=ok,
        output=draw(json_values),
        error=None if ok else draw(st.none() | error_infos),
        node=draw(opt_ids),
        attempts=draw(counts),
        timings=draw(st.dictionaries(short_ids, counts, max_size=4)),
        ref=draw(opt_ids),
    )


STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Hello: st.builds(
        Hello,
        role=st.sampled_from(["node", "client"]),
        version=counts,
        token=opt_texts,
        name=opt_ids,
        ref=opt_ids,
    ),
    Welcome: st.builds(
        Welcome,
        instance=ids,
        version=counts,
        heartbeat_interval=positive,
        principal=ids,
        ref=opt_ids,
    ),
    Error: st.builds(Error, code=ids, message=texts, job_id=opt_ids, ref=opt_ids),
    Register: st.builds(
        Register,
        capacity=st.integers(1, MAX_CAPACITY),
        node_id=opt_ids,
        capabilities=json_objects,
        labels=st.dictionaries(short_ids, short_ids, max_size=4),
        pools=name_lists,
        running=st.lists(st.builds(RunningJob, job_id=ids, attempt=attempts), max_size=4),
        ref=opt_ids,
    ),
    Registered: st.builds(Registered, node_id=ids, epoch=counts, pools=name_lists, ref=opt_ids),
    Heartbeat: st.builds(
        Heartbeat, inflight=counts, running=name_lists, load=non_negative, ref=opt_ids
    ),
    Assign: st.builds(
        Assign,
        job_id=ids,
        attempt=attempts,
        deadline=counts,
        payload=json_values,
        session_id=opt_ids,
        ref=opt_ids,
    ),
    Accept: st.builds(Accept, job_id=ids, attempt=attempts, ref=opt_ids),
    Reject: st.builds(Reject, job_id=ids, attempt=attempts, reason=texts, ref=opt_ids),
    Progress: st.builds(Progress, job_id=ids, attempt=attempts, data=json_values,
                        stage=opt_ids, ref=opt_ids),
    Result: st.composite(_result)(),
    Cancel: st.builds(Cancel, job_id=ids, attempt=st.none() | attempts, ref=opt_ids),
    Drain: st.builds(Drain, reason=opt_texts, ref=opt_ids),
    Unavailable: st.builds(Unavailable, service=ids, ttl=durations, ref=opt_ids),
    Submit: st.builds(
        Submit,
        job_id=opt_ids,
        pools=name_lists,
        requirements=json_objects,
        payload=json_values,
        session_id=opt_ids,
        priority=st.integers(-MAX_PRIORITY, MAX_PRIORITY),
        services=name_lists,
        ack_timeout=opt_durations,
        run_timeout=opt_durations,
        queue_timeout=opt_durations,
        max_attempts=st.none() | attempts,
        ref=opt_ids,
    ),
    Accepted: st.builds(
        Accepted,
        job_id=ids,
        state=st.sampled_from(sorted(JOB_STATES)),
        duplicate=st.booleans(),
        ref=opt_ids,
    ),
    Done: st.composite(_done)(),
    schedd.protocol.StageDone: st.composite(_stage_done)(),
    Status: st.builds(Status, job_id=ids, ref=opt_ids),
    Query: st.builds(Query, what=st.sampled_from(sorted(QUERY_SUBJECTS)), ref=opt_ids),
    Answer: st.builds(
        Answer, what=st.sampled_from(sorted(QUERY_SUBJECTS)),
        data=st.dictionaries(short_ids, json_values, max_size=3), ref=opt_ids,
    ),
    Job: st.builds(
        Job,
        job_id=ids,
        state=st.sampled_from(sorted(JOB_STATES)),
        attempt=counts,
        node=opt_ids,
        info=json_objects,
        ref=opt_ids,
    ),
    Follow: st.builds(Follow, job_id=ids, ref=opt_ids),
    schedd.protocol.FollowSession: st.builds(schedd.protocol.FollowSession, session_id=ids,
                                             ref=opt_ids),
    schedd.protocol.Skipped: st.builds(schedd.protocol.Skipped, session_id=ids, from_seq=counts,
                                       to_seq=counts, ref=opt_ids),
    schedd.protocol.Session: st.builds(schedd.protocol.Session, session_id=ids, next_seq=counts,
                                       held=counts, ref=opt_ids),
    Ping: st.builds(Ping, ref=opt_ids),
    Pong: st.builds(Pong, ref=opt_ids),
    schedd.protocol.Admin: st.one_of(
        st.builds(schedd.protocol.Admin, action=st.sampled_from(["drain", "undrain"]),
                  node_id=ids, ref=opt_ids),
        st.builds(schedd.protocol.Admin, action=st.sampled_from(["cancel", "requeue"]),
                  job_id=ids, ref=opt_ids),
        st.builds(schedd.protocol.Admin, action=st.just("requeue"),
                  states=st.lists(st.sampled_from(["failed", "canceled", "timed_out"]),
                                  max_size=3),
                  pool=st.none() | ids, since=st.none() | durations,
                  limit=st.none() | st.integers(1, 100), ref=opt_ids),
    ),
    schedd.protocol.Acted: st.builds(
        schedd.protocol.Acted, action=st.sampled_from(["drain", "undrain", "cancel", "requeue"]),
        results=st.lists(st.dictionaries(short_ids, json_values, max_size=3), max_size=3),
        ref=opt_ids,
    ),
    schedd.protocol.Undrain: st.builds(schedd.protocol.Undrain, reason=opt_texts, ref=opt_ids),
}

messages: st.SearchStrategy[Message] = st.one_of(*STRATEGIES.values())

# One realistic example of every message, every field set (where the rules allow).
EXAMPLES: dict[str, Message] = {
    "hello": Hello(
        role="node", token="s3cret", version=PROTOCOL_VERSION, name="gpu-box-7", ref="h1"
    ),
    "welcome": Welcome(
        instance="schedd-a", version=1, heartbeat_interval=1.0, principal="node:gpu-box-7", ref="h1"
    ),
    "error": Error(code="E_STALE_ATTEMPT", message="attempt 1 is stale", job_id="j1", ref="r9"),
    "register": Register(
        node_id="gpu-box-7",
        capabilities={"asr_langs": ["zh", "en"], "services": ["asr", "mt"]},
        capacity=4,
        labels={"zone": "eu-1"},
        pools=["zh>en"],
        running=[RunningJob(job_id="j0", attempt=2)],
        ref="reg",
    ),
    "registered": Registered(node_id="gpu-box-7", epoch=3, pools=["zh>en", "en>zh"], ref="reg"),
    "heartbeat": Heartbeat(inflight=1, running=["j0"], load=0.25),
    "assign": Assign(
        job_id="j1",
        attempt=1,
        payload={"text": "你好"},
        session_id="s1",
        deadline=1_700_000_005_000,
    ),
    "accept": Accept(job_id="j1", attempt=1, ref="a1"),
    "reject": Reject(job_id="j1", attempt=1, reason="model not loaded", ref="a1"),
    "progress": Progress(job_id="j1", attempt=1, data={"partial": "hel"}),
    "result": Result(job_id="j1", attempt=1, ok=True, output={"text": "hello"}, ref="res1"),
    "cancel": Cancel(job_id="j1", attempt=1),
    "drain": Drain(reason="upgrade"),
    "unavailable": Unavailable(service="mt", ttl=30.0),
    "submit": Submit(
        job_id="j1",
        pools=["zh>en"],
        requirements={"src": "zh", "tgt": "en"},
        payload={"text": "你好"},
        session_id="s1",
        priority=5,
        services=["mt"],
        ack_timeout=2.0,
        run_timeout=30.0,
        queue_timeout=10.0,
        max_attempts=3,
        seq=3,
        gap_timeout=5.0,
        ref="c1",
    ),
    "accepted": Accepted(job_id="j1", state="queued", duplicate=False, ref="c1"),
    "stage_done": schedd.protocol.StageDone(
        job_id="u1", stage="de/1", branch="de", index=1, state="done", ok=True,
        output={"text": "hallo"}),
    "done": Done(
        job_id="j1",
        state="done",
        ok=True,
        output={"text": "hello"},
        node="gpu-box-7",
        attempts=1,
        timings={"submitted": 1, "assigned": 2, "accepted": 3, "finished": 4},
        session_id="s1",
        seq=3,
    ),
    "status": Status(job_id="j1", ref="s"),
    "job": Job(
        job_id="j1", state="running", attempt=1, node="gpu-box-7", info={"pools": ["zh>en"]}
    ),
    "follow": Follow(job_id="j1", ref="f"),
    "follow_session": schedd.protocol.FollowSession(session_id="s1", ref="f2"),
    "skipped": schedd.protocol.Skipped(session_id="s1", from_seq=3, to_seq=4),
    "session": schedd.protocol.Session(session_id="s1", next_seq=5, held=2, ref="f2"),
    "query": Query(what="jobs", state="failed", pool="p", principal="token:1", node="n1",
                   since=1, until=2, limit=5, cursor="1.0", ref="q"),
    "answer": Answer(what="stats", data={"counts": {"done": 3}}, ref="q"),
    "admin": schedd.protocol.Admin(action="requeue", states=["failed"], pool="gpu", since=600.0,
                                   limit=10, ref="a1"),
    "acted": schedd.protocol.Acted(
        action="drain",
        results=[{"node_id": "n1", "outcome": "drained", "state": "draining", "jobs": 2}],
        ref="a1"),
    "undrain": schedd.protocol.Undrain(reason="maintenance done"),
    "ping": Ping(ref="p1"),
    "pong": Pong(ref="p1"),
}


def required_only(cls: type[Any]) -> dict[str, Any]:
    """The fields of ``cls`` that have no default, taken from its example."""
    example = EXAMPLES[MESSAGE_TYPES_BY_CLASS[cls]]
    return {
        field.name: getattr(example, field.name)
        for field in attrs.fields(cls)
        if field.default is attrs.NOTHING
    }


MESSAGE_TYPES_BY_CLASS: dict[type[Any], str] = {cls: tag for tag, cls in MESSAGE_TYPES.items()}


# --------------------------------------------------------------------------------------------
# Round trips.
# --------------------------------------------------------------------------------------------


def test_examples_cover_every_message_type() -> None:
    assert set(EXAMPLES) == set(MESSAGE_TYPES)
    assert set(STRATEGIES) == set(MESSAGE_TYPES.values())
    for tag, message in EXAMPLES.items():
        assert tag == message.TYPE


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_every_message_round_trips(tag: str) -> None:
    message = EXAMPLES[tag]
    data = encode(message)
    assert isinstance(data, bytes)
    assert decode(data) == message
    assert decode(data.decode()) == message
    assert decode(bytearray(data)) == message


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_encode_writes_type_first_and_every_field(tag: str) -> None:
    message = EXAMPLES[tag]
    obj = orjson.loads(encode(message))
    assert next(iter(obj)) == "type"
    assert obj["type"] == tag
    omitted = _OMITTED_WHEN_DEFAULT.get(type(message), ())
    fields = [field.name for field in attrs.fields(type(message)) if field.name not in omitted]
    # a field omitted when it holds its default comes after the others when it does not
    fields += [name for name in omitted if name in obj]
    assert list(obj)[1:] == fields


def test_query_leaves_out_the_job_filters_it_does_not_use() -> None:
    assert encode(Query(what="nodes")) == b'{"type":"query","what":"nodes","ref":null}'
    jobs = Query(what="jobs", state="failed", limit=5, ref="q")
    assert orjson.loads(encode(jobs)) == {"type": "query", "what": "jobs", "ref": "q",
                                          "state": "failed", "limit": 5}
    assert decode(encode(jobs)) == jobs


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_optional_fields_may_be_omitted(tag: str) -> None:
    cls = MESSAGE_TYPES[tag]
    fields = required_only(cls)
    data = orjson.dumps({"type": tag, **converter.unstructure(fields)})
    assert decode(data) == cls(**fields)


@pytest.mark.parametrize("tag", sorted(MESSAGE_TYPES))
def test_required_fields_may_not_be_omitted(tag: str) -> None:
    cls = MESSAGE_TYPES[tag]
    fields = converter.unstructure(required_only(cls))
    for name in fields:
        partial = {key: value for key, value in fields.items() if key != name}
        with pytest.raises(ProtocolError) as caught:
            decode(orjson.dumps({"type": tag, **partial}))
        assert caught.value.code == E_BAD_FIELD
        assert f"required field missing @ $.{name}" in caught.value.message


def test_member_order_does_not_matter() -> None:
    assert decode(b'{"attempt": 2, "job_id": "j", "type": "accept"}') == Accept(
        job_id="j", attempt=2
    )


def test_converter_tagged_union_matches_encode() -> None:
    for message in EXAMPLES.values():
        unstructured = converter.unstructure(message, unstructure_as=Message)
        assert unstructured == orjson.loads(encode(message))
        # A union is not a `type[T]` to mypy; cattrs handles it at run time.
        assert converter.structure(unstructured, Message) == message  # type: ignore[arg-type]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_arbitrary_valid_messages_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


# --------------------------------------------------------------------------------------------
# Errors: each code, and the path in the message.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "needle"),
    [
        (b"", E_MALFORMED, "not valid JSON"),
        (b"{", E_MALFORMED, "not valid JSON"),
        (b"\xff\xfe", E_MALFORMED, "not valid JSON"),
        (b"NaN", E_MALFORMED, "not valid JSON"),
        (b"[1, 2]", E_MALFORMED, "not array"),
        (b'"hello"', E_MALFORMED, "not string"),
        (b"null", E_MALFORMED, "not null"),
        (b"{}", E_UNKNOWN_TYPE, "no 'type'"),
        (b'{"type": null}', E_UNKNOWN_TYPE, "no 'type'"),
        (b'{"type": 7}', E_UNKNOWN_TYPE, "unknown message type 7"),
        (b'{"type": ["ping"]}', E_UNKNOWN_TYPE, "unknown message type ['ping']"),
        (b'{"type": "Ping"}', E_UNKNOWN_TYPE, "unknown message type 'Ping'"),
        (b'{"type": "ping", "extra": 1}', E_BAD_FIELD, "extra fields found (extra) @ $"),
        (b'{"type": "accept", "job_id": "j"}', E_BAD_FIELD, "required field missing @ $.attempt"),
        (b'{"type": "accept", "job_id": "", "attempt": 1}', E_BAD_FIELD, "@ $.job_id"),
        (b'{"type": "accept", "job_id": 5, "attempt": 1}', E_BAD_FIELD, "got number @ $.job_id"),
        (b'{"type": "accept", "job_id": "j", "attempt": 0}', E_BAD_FIELD, "@ $.attempt"),
        (b'{"type": "accept", "job_id": "j", "attempt": true}', E_BAD_FIELD, "$.attempt"),
        (b'{"type": "accept", "job_id": "j", "attempt": 1.5}', E_BAD_FIELD, "$.attempt"),
        (b'{"type": "accept", "job_id": "j", "attempt": "1"}', E_BAD_FIELD, "$.attempt"),
        (b'{"type": "accept", "job_id": "a\\u0000b", "attempt": 1}', E_BAD_FIELD, "control"),
        (b'{"type": "register", "capacity": 0}', E_BAD_FIELD, "@ $.capacity"),
        (b'{"type": "register", "capacity": 1, "pools": "ab"}', E_BAD_FIELD, "@ $.pools"),
        (b'{"type": "register", "capacity": 1, "pools": ["a", 1]}', E_BAD_FIELD, "$.pools[1]"),
        (b'{"type": "register", "capacity": 1, "labels": []}', E_BAD_FIELD, "$.labels"),
        (b'{"type": "register", "capacity": 1, "labels": {"a": 1}}', E_BAD_FIELD, "$.labels['a']"),
        (
            b'{"type": "register", "capacity": 1, "running": [{"job_id": "j"}]}',
            E_BAD_FIELD,
            "required field missing @ $.running[0].attempt",
        ),
        (
            b'{"type": "register", "capacity": 1, "running": [{"job_id": "j", "attempt": 0}]}',
            E_BAD_FIELD,
            "@ $.running[0].attempt",
        ),
        (
            b'{"type": "register", "capacity": 1, "running": [{"job_id": "j", "attempt": 1, '
            b'"x": 1}]}',
            E_BAD_FIELD,
            "extra fields found (x) @ $.running[0]",
        ),
        (b'{"type": "register", "capacity": 1, "running": [5]}', E_BAD_FIELD, "$.running[0]"),
        (b'{"type": "register", "capacity": 1, "running": {}}', E_BAD_FIELD, "$.running"),
        (b'{"type": "hello", "role": "admin", "version": 1}', E_BAD_FIELD, "@ $.role"),
        (b'{"type": "hello", "role": "node", "version": -1}', E_BAD_FIELD, "@ $.version"),
        (b'{"type": "heartbeat", "inflight": 0, "load": -0.5}', E_BAD_FIELD, "@ $.load"),
        (b'{"type": "unavailable", "service": "mt", "ttl": 0}', E_BAD_FIELD, "@ $.ttl"),
        (b'{"type": "submit", "priority": 1001}', E_BAD_FIELD, "@ $.priority"),
        (b'{"type": "submit", "pools": ["a"], "max_attempts": 0}', E_BAD_FIELD, "$.max_attempts"),
        (
            b'{"type": "result", "job_id": "j", "attempt": 1, "ok": false}',
            E_BAD_FIELD,
            "is required when ok is false @ $.error",
        ),
        (
            b'{"type": "result", "job_id": "j", "attempt": 1, "ok": false, "error": "x"}',
            E_BAD_FIELD,
            "expected an object, got string @ $.error",
        ),
        (
            b'{"type": "result", "job_id": "j", "attempt": 1, "ok": false, "error": {"code": ""}}',
            E_BAD_FIELD,
            "must not be empty @ $.error.code",
        ),
        (
            b'{"type": "result", "job_id": "j", "attempt": 1, "ok": true, "error": {"code": "X"}}',
            E_BAD_FIELD,
            "must be null when ok is true @ $.error",
        ),
        (
            b'{"type": "done", "job_id": "j", "state": "failed", "ok": true}',
            E_BAD_FIELD,
            "@ $.ok",
        ),
        (b'{"type": "done", "job_id": "j", "state": "queued", "ok": false}', E_BAD_FIELD, "state"),
        (b'{"type": "cancel", "job_id": "j", "attempt": null}', None, ""),
    ],
)
def test_decode_errors(data: bytes, code: str | None, needle: str) -> None:
    if code is None:
        decode(data)
        return
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert caught.value.code == code
    assert needle in caught.value.message, caught.value.message


def test_bad_field_lists_every_structural_problem() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"type": "assign", "payload": 1, "x": 2}')
    message = caught.value.message
    assert message.startswith("assign: ")
    for needle in ("@ $.job_id", "@ $.attempt", "@ $.deadline", "extra fields found (x)"):
        assert needle in message


def test_bad_field_message_stays_short() -> None:
    running = [{"job_id": "j"}] * 1000
    data = orjson.dumps({"type": "register", "capacity": 1, "running": running})
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert caught.value.message.endswith("and 990 more")


def test_long_unknown_type_is_cut() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(orjson.dumps({"type": "x" * 10_000}))
    assert caught.value.code == E_UNKNOWN_TYPE
    assert len(caught.value.message) < 100


def test_ids_are_bounded() -> None:
    decode(orjson.dumps({"type": "follow", "job_id": "j" * MAX_ID_LEN}))
    with pytest.raises(ProtocolError) as caught:
        decode(orjson.dumps({"type": "follow", "job_id": "j" * (MAX_ID_LEN + 1)}))
    assert caught.value.code == E_BAD_FIELD
    with pytest.raises(ProtocolError):
        decode(orjson.dumps({"type": "submit", "pools": ["p"] * (MAX_LIST + 1)}))


def test_integers_are_bounded_to_exact_doubles() -> None:
    decode(orjson.dumps({"type": "assign", "job_id": "j", "attempt": 1, "deadline": MAX_INT}))
    with pytest.raises(ProtocolError):
        decode(
            orjson.dumps({"type": "assign", "job_id": "j", "attempt": 1, "deadline": MAX_INT + 1})
        )


def nested(depth: int) -> bytes:
    """A JSON array nesting ``depth`` arrays and objects, alternately."""
    opening = b"".join(b'[' if level % 2 == 0 else b'{"k":' for level in range(depth))
    closing = b"".join(b']' if level % 2 == 0 else b'}' for level in reversed(range(depth)))
    return opening + b"1" + closing


PEER_JSON_FIELDS = [  # (message around the value, the field, levels the field adds)
    (b'{"type": "submit", "payload": %s}', "payload", 0),
    (b'{"type": "submit", "requirements": {"r": %s}}', "requirements", 1),
    (b'{"type": "progress", "job_id": "j", "attempt": 1, "data": %s}', "data", 0),
    (b'{"type": "result", "job_id": "j", "attempt": 1, "ok": true, "output": %s}', "output", 0),
    (b'{"type": "register", "capacity": 1, "capabilities": {"c": %s}}', "capabilities", 1),
    (b'{"type": "heartbeat", "inflight": 0, "capabilities": {"c": %s}}', "capabilities", 1),
]


@pytest.mark.parametrize(("template", "field", "own"), PEER_JSON_FIELDS)
def test_opaque_json_a_peer_sends_is_bounded_in_depth(
    template: bytes, field: str, own: int
) -> None:
    inner = MAX_DEPTH - own
    message = decode(template % nested(inner))
    assert decode(encode(message)) == message  # what decodes can be encoded again
    with pytest.raises(ProtocolError) as caught:
        decode(template % nested(inner + 1))
    assert caught.value.code == E_BAD_FIELD
    assert caught.value.message.endswith(
        f"must not nest arrays and objects more than {MAX_DEPTH} levels deep @ $.{field}")


def test_the_deepest_value_json_parses_is_refused_not_crashed_on() -> None:
    # orjson parses 1024 levels but encodes 254 at most: such a payload decoded, then failed to
    # re-encode (E_INTERNAL) when the daemon stored it
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"type": "submit", "payload": %s}' % nested(1000))
    assert caught.value.code == E_BAD_FIELD and "@ $.payload" in caught.value.message


@pytest.mark.parametrize(
    ("template", "field"),
    [
        (b'{"type": "submit", "ack_timeout": %s}', "ack_timeout"),
        (b'{"type": "submit", "run_timeout": %s}', "run_timeout"),
        (b'{"type": "submit", "queue_timeout": %s}', "queue_timeout"),
        (b'{"type": "unavailable", "service": "s", "ttl": %s}', "ttl"),
    ],
)
def test_durations_are_bounded(template: bytes, field: str) -> None:
    decode(template % str(MAX_SECONDS).encode())
    for value in (b"1e308", b"1e15", str(MAX_SECONDS + 0.001).encode()):
        with pytest.raises(ProtocolError) as caught:
            decode(template % value)
        assert caught.value.code == E_BAD_FIELD
        assert caught.value.message.endswith(f"must be at most {MAX_SECONDS} @ $.{field}")
    for value in (b"0", b"-1"):
        with pytest.raises(ProtocolError) as caught:
            decode(template % value)
        assert caught.value.message.endswith(f"must be greater than 0 @ $.{field}")


def test_ints_are_accepted_where_floats_are_expected() -> None:
    message = decode(b'{"type": "unavailable", "service": "mt", "ttl": 30}')
    assert message == Unavailable(service="mt", ttl=30.0)


# --------------------------------------------------------------------------------------------
# Construction runs the same rules.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "path"),
    [
        (lambda: Accept(job_id="", attempt=1), "job_id"),
        (lambda: Accept(job_id="j", attempt=0), "attempt"),
        (lambda: Register(capacity=0), "capacity"),
        (lambda: Register(capacity=1, pools=["a", ""]), "pools[1]"),
        (lambda: Register(capacity=1, running=[("j", 1)]), "running[0]"),  # type: ignore[list-item]
        (lambda: Hello(role="admin", version=1), "role"),  # type: ignore[arg-type]
        (lambda: Heartbeat(inflight=True), "inflight"),
        (
            lambda: Welcome(
                instance="i", version=1, heartbeat_interval=float("nan"), principal="p"
            ),
            "heartbeat_interval",
        ),
        (lambda: Result(job_id="j", attempt=1, ok=False), "error"),
        (lambda: Done(job_id="j", state="done", ok=False), "ok"),
        (lambda: Error(code="E_X", ref=""), "ref"),
        (lambda: Progress(job_id="\ud800", attempt=1), "job_id"),
    ],
)
def test_invalid_messages_cannot_be_constructed(build: Any, path: str) -> None:
    with pytest.raises(InvalidField) as caught:
        build()
    assert caught.value.path == path
    assert isinstance(caught.value, ValueError)


def test_messages_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Accept(job_id="j", attempt=1).job_id = "other"  # type: ignore[misc]


def test_senders() -> None:
    assert {
        "hello",
        "register",
        "heartbeat",
        "accept",
        "reject",
        "progress",
        "result",
        "drain",
        "unavailable",
        "ping",
        "pong",
    } == NODE_SENDS
    client = {"hello", "submit", "cancel", "status", "follow", "follow_session", "query", "admin",
              "ping", "pong"}
    assert client == CLIENT_SENDS
    assert "assign" in DAEMON_SENDS and "submit" not in DAEMON_SENDS


# --------------------------------------------------------------------------------------------
# Fuzzing: decode raises ProtocolError or returns a message, nothing else.
# --------------------------------------------------------------------------------------------


def _decode_or_protocol_error(data: bytes | str) -> None:
    try:
        message = decode(data)
    except ProtocolError as exc:
        assert exc.code in {E_MALFORMED, E_UNKNOWN_TYPE, E_BAD_FIELD}
        assert exc.code in ERROR_CODES
    else:
        assert isinstance(message, tuple(MESSAGE_TYPES.values()))
        assert decode(encode(message)) == message


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_arbitrary_text_decodes_or_raises_protocol_error(data: str) -> None:
    _decode_or_protocol_error(data)


@settings(max_examples=1000)
@given(json_values)
def test_arbitrary_json_decodes_or_raises_protocol_error(value: Any) -> None:
    _decode_or_protocol_error(orjson.dumps(value))


FIELD_NAMES = sorted({f.name for c in MESSAGE_TYPES.values() for f in attrs.fields(c)})


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.sampled_from(["x", ""]),
        json_values | st.lists(short_ids | attempts, max_size=3) | json_objects,
        max_size=8,
    ),
)
def test_arbitrary_fields_decode_or_raise_protocol_error(tag: str, fields: dict[str, Any]) -> None:
    _decode_or_protocol_error(orjson.dumps({"type": tag, **fields}))


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_messages_decode_or_raise_protocol_error(
    message: Message, data: st.DataObject
) -> None:
    obj = orjson.loads(encode(message))
    keys = sorted(obj)
    key = data.draw(st.sampled_from(keys))
    action = data.draw(st.sampled_from(["drop", "replace", "add"]))
    if action == "drop":
        del obj[key]
    elif action == "replace":
        obj[key] = data.draw(json_values | json_objects)
    else:
        obj[data.draw(short_ids)] = data.draw(json_values)
    _decode_or_protocol_error(orjson.dumps(obj))


# --------------------------------------------------------------------------------------------
# The tables and the public API.
# --------------------------------------------------------------------------------------------


def test_error_codes_cover_every_code() -> None:
    expected = set(SCRIPT_ERRORS) | {
        "E_MALFORMED",
        "E_UNKNOWN_TYPE",
        "E_BAD_FIELD",
        "E_TOO_LARGE",
        "E_VERSION",
        "E_ATTACHMENT",
        "E_BAD_BATCH",
        "E_AUTH",
        "E_ROLE",
        "E_IDENTITY",
        "E_RATE",
        "E_INFLIGHT",
        "E_DETACHED",
        "E_FORBIDDEN",
        "E_UNAVAILABLE",
        "E_TOO_MANY_STAGES",
        "E_TOO_MANY_BRANCHES",
        "E_BAD_STAGE",
        "E_SHUTTING_DOWN",
        "E_INTERNAL",
    }
    assert set(ERROR_CODES) == expected
    for code, meaning in ERROR_CODES.items():
        assert code.startswith("E_") and code.isupper()
        assert meaning and "\n" not in meaning and "|" not in meaning


def test_public_api_is_pinned() -> None:
    assert sorted(schedd.protocol.__all__) == sorted(
        [
            "CLIENT_SENDS",
            "DAEMON_SENDS",
            "DEFAULT_MAX_FRAME",
            "ERROR_CODES",
            "E_ATTACHMENT",
            "E_AUTH",
            "E_BAD_BATCH",
            "BatchElement",
            "BatchItemError",
            "encode_batch",
            "is_batch",
            "split_batch",
            "E_BAD_FIELD",
            "E_DETACHED",
            "E_IDENTITY",
            "E_INFLIGHT",
            "E_INTERNAL",
            "E_MALFORMED",
            "E_RATE",
            "E_ROLE",
            "E_SHUTTING_DOWN",
            "E_TOO_LARGE",
            "E_UNAVAILABLE",
            "E_UNKNOWN_TYPE",
            "E_VERSION",
            "HEADER_SIZE",
            "JOB_STATES",
            "MAX_ATTACHMENTS",
            "MAX_CAPACITY",
            "MAX_DEPTH",
            "MAX_ID_LEN",
            "MAX_INT",
            "MAX_JOB_PAGE",
            "MAX_LIST",
            "MAX_MAPPING",
            "MAX_PRIORITY",
            "MAX_RUNNING",
            "MAX_SECONDS",
            "MAX_TEXT_LEN",
            "MESSAGE_TYPES",
            "NODE_SENDS",
            "PROTOCOL_VERSION",
                "QUERY_SUBJECTS",
            "TERMINAL_STATES",
            "Accept",
            "Accepted",
                "Answer",
            "Assign",
            "Attachment",
            "Cancel",
            "Done",
            "Drain",
            "Error",
            "ErrorInfo",
            "Follow",
            "FrameDecoder",
            "Heartbeat",
            "Hello",
            "InvalidField",
            "Job",
            "JobState",
            "Message",
            "Ping",
            "Pong",
            "Progress",
                "Query",
            "Register",
            "Registered",
            "Reject",
            "Result",
            "Role",
            "RunningJob",
            "Sender",
            "StageDone",
            "Status",
            "Submit",
            "TerminalState",
            "Unavailable",
            "Welcome",
            "decode",
            "encode",
            "encode_frame",
            "join_trace",
            "new_traceparent",
            "split_trace",
            "trace_id",
            "ADMIN_ACTIONS",
            "E_FORBIDDEN",
            "MAX_ADMIN_JOBS",
            "Acted",
            "Admin",
            "Undrain",
            "FollowSession",
            "Session",
            "Skipped",
        ]
    )
    for name in schedd.protocol.__all__:
        assert hasattr(schedd.protocol, name), name


def test_protocol_package_imports_no_io_library() -> None:
    package = pathlib.Path(schedd.protocol.__file__).parent
    forbidden = {"trio", "socket", "asyncio", "redis", "hiredis", "fakeredis", "selectors", "ssl"}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


@pytest.mark.parametrize("raw", [
    b'{"type":"heartbeat","inflight":0,"running":[],"load":0.0}',
    b'{"load":3,"running":[],"inflight":2,"type":"heartbeat"}',
])
def test_idle_heartbeat_fast_path_equals_the_general_path(raw: bytes) -> None:
    obj = orjson.loads(raw)
    obj.pop("type")
    assert schedd.protocol.codec._idle_beat(dict(obj)) is not None  # the fast path is taken
    general = schedd.protocol.codec._STRUCTURE["heartbeat"][0](obj, Heartbeat)
    assert schedd.protocol.decode(raw) == general
    decoded = schedd.protocol.decode(raw)
    assert isinstance(decoded, Heartbeat) and isinstance(decoded.load, float)


@pytest.mark.parametrize(("raw", "fragment"), [
    (b'{"type":"heartbeat","inflight":-1,"running":[],"load":0}', "inflight"),
    (b'{"type":"heartbeat","inflight":true,"running":[],"load":0}', "inflight"),
    (b'{"type":"heartbeat","inflight":0,"running":[],"load":"x"}', "load"),
    (b'{"type":"heartbeat","inflight":0,"running":[],"load":-1}', "load"),
    (b'{"type":"heartbeat","inflight":0,"running":{},"load":0}', "running"),
])
def test_idle_heartbeat_refusals_keep_the_general_errors(raw: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        schedd.protocol.decode(raw)
    assert info.value.code == "E_BAD_FIELD" and fragment in info.value.message


# --------------------------------------------------------------------------------------------
# Decode's direct path (the constructor without cattrs) and encode_with_ref.
# --------------------------------------------------------------------------------------------


def _outcome(raw: bytes, *, direct: bool) -> Any:
    """What decode makes of ``raw``: the message, or the (code, message) of its error; with
    ``direct`` False, through the general path alone."""
    saved = schedd.protocol.codec._direct
    if not direct:
        schedd.protocol.codec._direct = lambda obj, entry: None
    try:
        return decode(raw)
    except ProtocolError as exc:
        return (exc.code, exc.message)
    finally:
        schedd.protocol.codec._direct = saved


def _same_either_way(raw: bytes) -> None:
    fast, general = _outcome(raw, direct=True), _outcome(raw, direct=False)
    assert fast == general
    if not isinstance(fast, tuple):  # the same values of the same JSON types
        assert encode(fast) == encode(general)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_the_direct_path_decodes_exactly_what_the_general_path_does(message: Message) -> None:
    raw = encode(message)
    _same_either_way(raw)
    obj = orjson.loads(raw)
    tag = obj.pop("type")
    built = schedd.protocol.codec._direct(dict(obj), schedd.protocol.codec._DIRECT[tag])
    nested = [name for name in schedd.protocol.codec._DIRECT[tag][3] if obj.get(name)]
    if not nested:  # nothing of an attrs class to structure: the direct path built it
        assert built == message


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_the_direct_path_refuses_what_the_general_path_refuses_in_its_words(
    message: Message, data: st.DataObject
) -> None:
    obj = orjson.loads(encode(message))
    key = data.draw(st.sampled_from(sorted(k for k in obj if k != "type")))
    action = data.draw(st.sampled_from(["drop", "replace", "add", "null", "empty"]))
    if action == "drop":
        del obj[key]
    elif action == "replace":
        obj[key] = data.draw(json_values | json_objects | st.lists(json_values, max_size=2))
    elif action == "add":
        obj[data.draw(short_ids | st.sampled_from(FIELD_NAMES))] = data.draw(json_values)
    else:
        obj[key] = None if action == "null" else []
    _same_either_way(orjson.dumps(obj))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(MESSAGE_TYPES)),
    st.dictionaries(
        st.sampled_from(FIELD_NAMES) | st.sampled_from(["x", ""]),
        json_values | st.lists(short_ids | attempts, max_size=3) | json_objects,
        max_size=8,
    ),
)
def test_arbitrary_fields_decode_the_same_either_way(tag: str, fields: dict[str, Any]) -> None:
    _same_either_way(orjson.dumps({"type": tag, **fields}))


@pytest.mark.parametrize("raw", [
    b'{"type":"done","job_id":"j","state":"done","ok":true,"error":null,"attachments":[]}',
    b'{"type":"done","job_id":"j","state":"failed","ok":false,'
    b'"error":{"code":"E_X","message":"m"}}',
    b'{"type":"done","job_id":"j","state":"done","ok":true,"attachments":{}}',
    b'{"type":"done","job_id":"j","state":"done","ok":true,"attachments":null}',
    b'{"type":"result","job_id":"j","attempt":1,"ok":false,"error":[]}',
    b'{"type":"accept","job_id":"j","attempt":0}',
    b'{"type":"accept","job_id":"j"}',
    b'{"type":"accept","job_id":"j","attempt":1,"extra":1}',
    b'{"type":"pong","ref":""}',
    b'{"type":"register","capacity":1,"running":[{"job_id":"j","attempt":1}]}',
    b'{"type":"register","capacity":1,"running":[{"job_id":"j"}]}',
])
def test_nested_and_refused_fields_decode_the_same_either_way(raw: bytes) -> None:
    _same_either_way(raw)


def test_the_direct_path_is_taken_for_the_hot_messages() -> None:
    for raw in (encode(Accept(job_id="j", attempt=1)),
                encode(Result(job_id="j", attempt=1, ok=True, output={"n": 1}, ref="j1.2")),
                encode(Done(job_id="j", state="done", ok=True)),
                encode(Pong(ref="r1"))):
        obj = orjson.loads(raw)
        tag = obj.pop("type")
        assert schedd.protocol.codec._direct(obj, schedd.protocol.codec._DIRECT[tag]) \
            == decode(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages, ids)
def test_encode_with_ref_writes_what_encode_of_the_evolved_message_does(
    message: Message, ref: str
) -> None:
    assert schedd.protocol.codec.encode_with_ref(message, ref) \
        == encode(attrs.evolve(message, ref=ref))


@pytest.mark.parametrize("ref", ["", "x" * (MAX_ID_LEN + 1), "a\nb", 5])
def test_encode_with_ref_refuses_the_refs_evolve_refuses(ref: Any) -> None:
    message = Ping()
    with pytest.raises(InvalidField) as general:
        attrs.evolve(message, ref=ref)
    with pytest.raises(InvalidField) as direct:
        schedd.protocol.codec.encode_with_ref(message, ref)
    assert (direct.value.path, direct.value.reason) == (general.value.path, general.value.reason)
