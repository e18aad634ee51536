"""How a Link sends: the copy of a message with a ref (schedd.sdk._conn.with_ref) is what
attrs.evolve makes, without running the validators again; a message goes out at once when the
channel can write it at once, else through ``send``."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from schedd.protocol import Message, Ping, Result, Welcome, encode
from schedd.sdk._conn import Link, LinkLost, with_ref
from schedd.transport.channel import Channel, ChannelClosed
from tests.protocol.test_codec import messages


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_with_ref_equals_evolve(message: Message) -> None:
    copy = with_ref(message, "j3.17")
    assert copy == attrs.evolve(message, ref="j3.17")
    assert type(copy) is type(message) and copy is not message
    assert encode(copy) == encode(attrs.evolve(message, ref="j3.17"))


def test_with_ref_leaves_the_original_alone() -> None:
    result = Result(job_id="j", attempt=2, ok=True, output={"n": 1}, ref="old")
    copy = with_ref(result, "new")
    assert (result.ref, copy.ref) == ("old", "new")
    assert copy.output is result.output
    assert attrs.asdict(copy) == {**attrs.asdict(result), "ref": "new"}


# --------------------------------------------------------------------------------------------
# Link.send: at once when the channel can write at once, else through send.
# --------------------------------------------------------------------------------------------


class _Channel(Channel):
    """Records what the link asks of it; ``write_nowait`` takes a message when ``room``."""

    def __init__(self, *, room: bool, short: bool = False, broken: bool = False) -> None:
        self.peer = "test"
        self.room, self.short, self.broken = room, short, broken
        self.calls: list[tuple[str, Any]] = []

    def write_nowait(self, data: bytes) -> bool:
        self.calls.append(("write_nowait", data))
        return self.room

    @property
    def write_pending(self) -> bool:
        return self.short

    async def send(self, data: bytes) -> None:
        self.calls.append(("send", data))
        if self.broken:
            raise ChannelClosed("gone")

    async def send_many(self, messages: list[bytes]) -> None:
        self.calls.append(("send_many", messages))
        if self.broken:
            raise ChannelClosed("gone")

    async def aclose(self) -> None:
        self.calls.append(("aclose", None))


def _link(channel: Channel) -> Link:
    return Link(channel, "tcp://test", Welcome(instance="i", principal="p", version=1,
                                              heartbeat_interval=1.0))


async def test_a_message_the_channel_takes_at_once_is_not_sent_again() -> None:
    channel = _Channel(room=True)
    await _link(channel).send(Ping(), ref="r1")
    assert channel.calls == [("write_nowait", encode(Ping(ref="r1")))]


async def test_what_a_short_write_left_is_sent_before_send_returns() -> None:
    channel = _Channel(room=True, short=True)
    await _link(channel).send(Ping())
    assert channel.calls == [("write_nowait", encode(Ping())), ("send_many", [])]


async def test_a_channel_without_room_gets_the_message_through_send() -> None:
    channel = _Channel(room=False)
    await _link(channel).send(Ping(), ref="r2")
    frame = encode(Ping(ref="r2"))
    assert channel.calls == [("write_nowait", frame), ("send", frame)]


@pytest.mark.parametrize("short", [False, True])
async def test_a_broken_send_is_link_lost_and_closes_the_link(short: bool) -> None:
    channel = _Channel(room=short, short=short, broken=True)
    link = _link(channel)
    with pytest.raises(LinkLost):
        await link.send(Ping())
    assert link.closed and channel.calls[-1] == ("aclose", None)


async def test_the_send_is_a_cancellation_point() -> None:
    channel = _Channel(room=True)
    with trio.CancelScope() as scope:
        scope.cancel()
        await _link(channel).send(Ping())
    assert scope.cancelled_caught  # written, then the cancellation was delivered
