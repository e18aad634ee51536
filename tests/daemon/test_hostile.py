"""Hostile messages over both transports never reach ``E_INTERNAL`` nor a traceback.

One real daemon process (``schedd run``, embedded store, the WebSocket and TCP transports and
the ``langset`` plugin) serves the whole module. Hypothesis generates messages of every type a
node or a client may send, valid ones with fields swapped for hostile values (the deepest JSON
a parser takes, numbers at and past every bound, wrong types, control characters, unknown
members) and raw garbage; each example opens a connection over one transport, says ``hello``
(and ``register``, for a node, with a job of its own assigned so that job messages reach the
scripts), sends them, and waits for the ``pong`` of a ``ping`` sent behind them. No reply may be
``E_INTERNAL`` and the daemon's log may hold no traceback nor "internal error".
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schedd import protocol as p
from schedd.sdk import open_channel
from schedd.transport.channel import ChannelClosed
from tests.e2e_daemon import DaemonProcess

NODE_TYPES = sorted(p.NODE_SENDS - {"pong"})
CLIENT_TYPES = sorted(p.CLIENT_SENDS - {"pong"})


def _deep(depth: int) -> orjson.Fragment:
    return orjson.Fragment(b"[" * depth + b"0" + b"]" * depth)


def _int(value: int) -> int | orjson.Fragment:
    """An integer as JSON, also past the 64 bits orjson writes."""
    return value if -(2**63) <= value < 2**64 else orjson.Fragment(str(value).encode())


# values at and past every bound the protocol sets, and of every JSON type
EXTREMES: list[Any] = [
    None, True, "", "\x00", "\u0085", "x" * (p.MAX_ID_LEN + 1), "y" * (p.MAX_TEXT_LEN + 1),
    *map(_int, [0, -1, p.MAX_INT, p.MAX_INT + 1, 2**64 - 1, 2**64, -(2**63) - 1, 10**400,
                p.MAX_CAPACITY + 1, p.MAX_PRIORITY + 1, p.MAX_SECONDS + 1]),
    1e308, -1e308, 5e-324, -0.0, 1e15, 0.5,
    *map(_deep, [p.MAX_DEPTH, p.MAX_DEPTH + 1, 254, 255, 1023]),
    {"k": _deep(300)}, [], {}, ["p"] * (p.MAX_LIST + 1), {"job_id": "j", "attempt": 1},
    [{"job_id": "j", "attempt": p.MAX_INT}, {"job_id": "", "attempt": 0}],
]
hostile_values: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers().map(_int),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=5),
    st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63) | st.text(max_size=5),
                    max_size=4),
)


def _valid_fields(tag: str) -> dict[str, Any]:
    """A plausible value for every field of a message, for hostile ones to replace."""
    fields: dict[str, Any] = {}
    for name in attrs.fields(p.MESSAGE_TYPES[tag]):
        fields[name.name] = {
            "capacity": 1, "attempt": 1, "inflight": 0, "load": 0.5, "ttl": 1.0,
            "ok": True, "what": "stats", "role": "node", "version": 1, "priority": 0,
            "pools": ["p"], "running": [], "services": [], "capabilities": {},
            "labels": {}, "requirements": {}, "reason": "r", "service": "s",
        }.get(name.name)
    return fields


@st.composite
def hostile_messages(draw: st.DrawFn, tag: str, job_id: str) -> bytes:
    fields = _valid_fields(tag)
    if "job_id" in fields:
        fields["job_id"] = job_id
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3,
                              unique=True)):
        fields[name] = draw(hostile_values)
    if draw(st.booleans()):
        # the fields left at null where null is not allowed are hostile too
        fields = {k: v for k, v in fields.items() if v is not None or draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.text(max_size=8))] = draw(hostile_values)
    return orjson.dumps({"type": tag, **fields})


garbage = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.sampled_from([b"[]", b"null", b'{"type": 5}', b'{"type": "nope"}', b"{" * 2000,
                     b'{"type": "ping", "ref": ' + b"[" * 1100 + b"]" * 1100 + b"}"]),
)


def scripts(role: str, job_id: str) -> st.SearchStrategy[list[bytes]]:
    tags = NODE_TYPES if role == "node" else CLIENT_TYPES
    message = st.sampled_from(tags).flatmap(lambda tag: hostile_messages(tag, job_id))
    if role == "handshake":  # the first message of a connection
        return st.lists(hostile_messages("hello", job_id) | garbage, min_size=1, max_size=2)
    return st.lists(st.one_of(message, message, message, garbage), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with tempfile.TemporaryDirectory(prefix="hostile-") as folder:
        proc = DaemonProcess(
            Path(folder), "memory://",
            plugins=("transport_ws", "transport_tcp", "langset"),
            # generous: a violation closes the connection, not a rate limit; hostile hellos are
            # failed handshakes, which must not back the test's own address off
            extra="[limits]\nmax_messages_per_second = 100000\n"
                  "max_failed_handshakes = 1000000\n",
        )
        async def stop() -> None:
            proc.stop()

        try:
            trio.run(proc.start)
            yield proc
        finally:
            trio.run(stop)


_names = itertools.count()


async def _exchange(url: str, role: str, messages: list[bytes], job: str) -> list[p.Message]:
    """Hello (and a registered node holding job ``job``), the messages, and a ping: every
    reply up to its pong, or to the connection's close."""
    replies: list[p.Message] = []
    n = next(_names)
    async with open_channel(url) as channel:
        if role != "handshake":
            await channel.send(orjson.dumps({"type": "hello", "role": role, "version": 1}))
            assert isinstance(p.decode(await channel.receive()), p.Welcome)
        if role == "node":
            await channel.send(orjson.dumps(
                {"type": "register", "node_id": f"n{n}", "capacity": 1, "pools": [f"p{n}"]}))
            assert isinstance(p.decode(await channel.receive()), p.Registered)
            async with open_channel(url) as client:
                await client.send(orjson.dumps({"type": "hello", "role": "client",
                                                "version": 1}))
                await client.receive()
                await client.send(orjson.dumps({"type": "submit", "job_id": job,
                                                "pools": [f"p{n}"]}))
                assert isinstance(p.decode(await client.receive()), p.Accepted)
            assign = p.decode(await channel.receive())
            assert isinstance(assign, p.Assign) and assign.job_id == job
            await channel.send(orjson.dumps({"type": "accept", "job_id": job, "attempt": 1}))
        try:
            for message in messages:
                try:
                    message.decode()
                except UnicodeDecodeError:
                    if hasattr(channel, "_text"):
                        channel._text = False  # a WebSocket text message must be UTF-8
                await channel.send(message)
            await channel.send(orjson.dumps({"type": "ping", "ref": "end"}))
            while True:
                reply = p.decode(await channel.receive())
                if isinstance(reply, p.Pong) and reply.ref == "end":
                    break
                replies.append(reply)
        except ChannelClosed:
            pass  # too many violations, a frame the transport refused: closed after its error
    return replies


def assert_specific(replies: list[p.Message], log: str, sent: list[bytes]) -> None:
    """No reply says the daemon failed (E_INTERNAL) or its store did (E_UNAVAILABLE: the
    store is up), and the log holds no trace of either."""
    wrong = [r for r in replies
             if isinstance(r, p.Error) and r.code in (p.E_INTERNAL, p.E_UNAVAILABLE)]
    assert not wrong, (sent, wrong)
    for needle in ("Traceback", "internal error", "store refused", "store unavailable"):
        assert needle not in log, log


_jobs = itertools.count()


@pytest.mark.parametrize("transport", ["ws", "tcp"])
@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_messages_get_a_specific_error_never_an_internal_one(
    daemon: DaemonProcess, transport: str, data: st.DataObject,
) -> None:
    role = data.draw(st.sampled_from(["node", "client", "handshake"]))
    job = f"hostile-{transport}-{next(_jobs)}"
    messages = data.draw(scripts(role, job))
    url = daemon.ws if transport == "ws" else daemon.tcp
    logged = len(daemon.output())

    async def run() -> list[p.Message]:
        with trio.fail_after(20):
            return await _exchange(url, role, messages, job)

    replies = trio.run(run)
    assert_specific(replies, daemon.output()[logged:], messages)


def _sweep(role: str, job_id: str) -> list[bytes]:
    """Every field of every message the role sends, set to each extreme value in turn."""
    messages = []
    for tag in NODE_TYPES if role == "node" else CLIENT_TYPES:
        for name in _valid_fields(tag):
            for value in EXTREMES:
                fields = _valid_fields(tag)
                if "job_id" in fields:
                    fields["job_id"] = job_id
                fields[name] = value
                messages.append(orjson.dumps({"type": tag, **fields}))
    return messages


@pytest.mark.parametrize("transport", ["ws", "tcp"])
@pytest.mark.parametrize("role", ["node", "client"])
def test_every_field_at_every_extreme_gets_a_specific_error(
    daemon: DaemonProcess, transport: str, role: str,
) -> None:
    url = daemon.ws if transport == "ws" else daemon.tcp
    job = f"sweep-{transport}-{role}"
    messages = _sweep(role, job)
    logged = len(daemon.output())

    async def run() -> list[p.Message]:
        replies: list[p.Message] = []
        with trio.fail_after(120):
            # a few messages per connection: ten refused ones close it
            for start in range(0, len(messages), 8):
                replies += await _exchange(url, role, messages[start:start + 8],
                                           f"{job}-{start}")
        return replies

    replies = trio.run(run)
    assert_specific(replies, daemon.output()[logged:], [])
