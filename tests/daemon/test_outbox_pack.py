"""The outbox packs what it sends at once into array frames for a peer that reads them, and
sends one message per frame to any other; attachment frames and the message they follow are
never packed."""

from __future__ import annotations

import orjson
import trio

from schedd import protocol as p
from schedd.protocol.attachments import Blob
from schedd.session.outbox import PACK_BYTES, Outbox, _Alone, pack_frames
from schedd.transport.channel import Channel


class Recording(Channel):
    """A channel that records every frame sent (``send_many`` one list per write)."""

    peer = "test"

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    async def receive(self) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    async def send(self, data: bytes) -> None:
        self.writes.append([data])

    async def send_many(self, messages: list[bytes]) -> None:
        self.writes.append(list(messages))

    async def aclose(self) -> None:
        pass


def pong(i: int) -> bytes:
    return p.encode(p.Pong(ref=f"r{i}"))


def test_runs_of_plain_messages_are_packed_up_to_the_limit() -> None:
    frames = [pong(i) for i in range(5)]
    packed = pack_frames(frames, 2)
    assert [orjson.loads(f) for f in packed] == [
        [orjson.loads(frames[0]), orjson.loads(frames[1])],
        [orjson.loads(frames[2]), orjson.loads(frames[3])],
        orjson.loads(frames[4]),
    ]


def test_attachments_and_arrays_break_a_run_and_go_alone() -> None:
    declaring, blob, array = _Alone(pong(1)), Blob(b"[x"), _Alone(b"[1]")
    frames = [pong(0), declaring, blob, pong(2), pong(3), array, pong(4)]
    packed = pack_frames(frames, 10)
    assert packed[0] == pong(0)  # a run of one stays one message
    assert packed[1] is declaring and packed[2] is blob
    assert orjson.loads(packed[3]) == [orjson.loads(pong(2)), orjson.loads(pong(3))]
    assert packed[4] is array and packed[5] == pong(4)


def test_packing_keeps_under_the_byte_bound() -> None:
    big = b'{"type":"pong","ref":"' + b"x" * (PACK_BYTES // 2) + b'"}'
    packed = pack_frames([big, big, big], 10)
    assert len(packed) == 3 and all(f == big for f in packed)


async def test_post_many_packs_for_a_batch_peer_only() -> None:
    messages: list[p.Message] = [p.Pong(ref=f"r{i}") for i in range(5)]
    for pack, expected in ((3, [3, 2]), (0, [1, 1, 1, 1, 1])):
        channel = Recording()
        outbox = Outbox(channel, trio.CancelScope(), lambda: None)
        outbox.pack = pack
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.serve)
            await trio.sleep(0.01)
            outbox.post_many(messages)
            await trio.sleep(0.01)
            outbox.close()
        sent = [bytes(frame) for write in channel.writes for frame in write]
        sizes = [len(orjson.loads(f)) if p.is_batch(f) else 1 for f in sent]
        assert sizes == expected
        got = [m for f in sent for m in (orjson.loads(f) if p.is_batch(f) else [orjson.loads(f)])]
        assert [m["ref"] for m in got] == [f"r{i}" for i in range(5)]


async def test_messages_queued_at_once_are_packed_by_the_sender() -> None:
    channel = Recording()
    outbox = Outbox(channel, trio.CancelScope(), lambda: None)
    outbox.pack = 256
    for i in range(4):  # the sender is not running yet: everything queues
        outbox.post(p.Pong(ref=f"q{i}"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.serve)
        await trio.sleep(0.01)
        outbox.close()
    assert len(channel.writes) == 1 and len(channel.writes[0]) == 1
    assert [m["ref"] for m in orjson.loads(bytes(channel.writes[0][0]))] == \
        [f"q{i}" for i in range(4)]
