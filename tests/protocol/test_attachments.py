"""The sans-io attachment layer: typed TCP frames and the Collector's rules."""

from __future__ import annotations

import struct

import pytest

import schedd.protocol as p
from schedd.errors import ProtocolError
from schedd.protocol.attachments import AttachmentError, Blob, Collector, message_frames
from schedd.protocol.framing import FrameDecoder, encode_frame

ALL_BYTES = bytes(range(256))


def submit(*sizes: int) -> p.Submit:
    return p.Submit(job_id="j", pools=["p"], ref="r", attachments=[
        p.Attachment(name=f"a{i}", size=size) for i, size in enumerate(sizes)])


def test_an_attachment_frame_carries_a_type_byte_and_any_bytes() -> None:
    frame = encode_frame(Blob(ALL_BYTES))
    assert frame[:5] == struct.pack(">I", 257) + b"\x00"
    decoder = FrameDecoder(1024, 1024)
    frames = decoder.feed(encode_frame(b'{"type":"ping"}') + frame + encode_frame(Blob(b"")))
    assert frames == [b'{"type":"ping"}', ALL_BYTES, b""]
    assert [type(f) for f in frames] == [bytes, Blob, Blob]
    # a decoder without attachments returns every payload as it is
    assert FrameDecoder(1024).feed(frame) == [b"\x00" + ALL_BYTES]


def test_an_attachment_frame_may_pass_max_frame_up_to_max_blob() -> None:
    decoder = FrameDecoder(16, 64)
    big = encode_frame(Blob(bytes(64)))
    assert decoder.feed(big[:4]) == []  # its type byte decides: wait for it
    assert decoder.feed(big[4:]) == [bytes(64)]
    with pytest.raises(ProtocolError) as caught:  # a JSON frame over max_frame
        FrameDecoder(16, 64).feed(struct.pack(">I", 17) + b"{")
    assert caught.value.code == p.E_TOO_LARGE
    with pytest.raises(ProtocolError) as caught:  # over max_blob: refused at the header
        FrameDecoder(16, 64).feed(struct.pack(">I", 66))
    assert caught.value.code == p.E_TOO_LARGE and "64" in caught.value.message


def test_the_collector_hands_out_a_message_with_its_data() -> None:
    collector = Collector(100, 150)
    message = submit(3, 0)
    frames = message_frames(message, [b"abc", b""])
    assert collector.receive(frames[0], untagged_blobs=False) is None
    assert collector.waiting
    assert collector.receive(frames[1], untagged_blobs=False) is None
    assert collector.receive(frames[2], untagged_blobs=False) == (message, [b"abc", b""])
    assert collector.receive(p.encode(p.Ping()), untagged_blobs=False) == (p.Ping(), [])
    # WebSocket: a binary frame is an attachment only while one is awaited
    collector.receive(p.encode(submit(2)), untagged_blobs=True)
    assert collector.receive(b"xy", untagged_blobs=True) == (submit(2), [b"xy"])
    assert collector.receive(p.encode(p.Ping()), untagged_blobs=True) == (p.Ping(), [])


@pytest.mark.parametrize(("sizes", "close", "limit"), [
    ((101,), True, "max_attachment"), ((100, 51), False, "max_attachments")])
def test_limits_are_checked_on_the_declaration(sizes: tuple[int, ...], close: bool,
                                               limit: str) -> None:
    collector = Collector(100, 150)
    with pytest.raises(AttachmentError) as caught:
        collector.start(submit(*sizes))
    assert caught.value.code == p.E_TOO_LARGE and caught.value.close is close
    assert limit in caught.value.message
    if not close:  # the frames are dropped, then the stream goes on
        assert collector.add(bytes(100)) is None and collector.add(bytes(51)) is None
        assert not collector.waiting
        assert collector.start(p.Ping()) == []


@pytest.mark.parametrize("case", ["message_instead", "size", "undeclared"])
def test_frames_that_do_not_match_their_declaration(case: str) -> None:
    collector = Collector()
    if case != "undeclared":
        collector.start(submit(3, 3))
        collector.add(b"abc")
    with pytest.raises(AttachmentError) as caught:
        if case == "message_instead":
            collector.start(p.Ping())
        else:
            collector.add(b"ab")
    assert caught.value.code == p.E_ATTACHMENT and caught.value.close
    assert not collector.waiting


def test_message_frames_checks_the_data_against_the_declaration() -> None:
    with pytest.raises(ValueError):
        message_frames(submit(3), [])
    with pytest.raises(ValueError):
        message_frames(submit(3), [b"ab"])
    assert message_frames(p.Ping(), []) == [p.encode(p.Ping())]


def test_attachments_are_written_only_when_there_are_some() -> None:
    assert b"attachments" not in p.encode(p.Submit(pools=["p"]))
    assert p.decode(p.encode(submit(1))) == submit(1)
    with pytest.raises(ProtocolError) as caught:  # names are unique
        p.decode(b'{"type":"submit","attachments":[{"name":"a","size":1},'
                 b'{"name":"a","size":2}]}')
    assert caught.value.code == p.E_BAD_FIELD
