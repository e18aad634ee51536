"""TCP framing: frames reassemble however the stream is cut; bad headers fail before the body."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.errors import ProtocolError
from schedd.protocol import (
    DEFAULT_MAX_FRAME,
    E_MALFORMED,
    E_TOO_LARGE,
    HEADER_SIZE,
    FrameDecoder,
    Ping,
    decode,
    encode,
    encode_frame,
)

PAYLOADS = [b"x", b'{"type":"ping","ref":null}', bytes(range(256)), b"y" * 1000]
STREAM = b"".join(encode_frame(payload) for payload in PAYLOADS)


def test_encode_frame_prefixes_big_endian_length() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"z" * 258)[:HEADER_SIZE] == b"\x00\x00\x01\x02"


def test_encode_frame_refuses_an_empty_payload() -> None:
    with pytest.raises(ValueError):
        encode_frame(b"")


def test_one_feed_returns_every_complete_frame() -> None:
    decoder = FrameDecoder(max_frame=DEFAULT_MAX_FRAME)
    assert decoder.feed(STREAM) == PAYLOADS
    assert decoder.pending == 0
    assert decoder.feed(b"") == []


def test_split_at_every_byte_boundary_reassembles() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder(max_frame=DEFAULT_MAX_FRAME)
        frames = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:])
        assert frames == PAYLOADS, cut
        assert decoder.pending == 0


def test_byte_by_byte_reassembles() -> None:
    decoder = FrameDecoder(max_frame=DEFAULT_MAX_FRAME)
    frames: list[bytes] = []
    for index in range(len(STREAM)):
        frames += decoder.feed(STREAM[index : index + 1])
    assert frames == PAYLOADS


def test_pending_counts_a_partial_frame() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(encode_frame(b"hello")[:-2]) == []
    assert decoder.pending == HEADER_SIZE + 3
    assert decoder.feed(b"lo") == [b"hello"]
    assert decoder.pending == 0


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_frame(b"0123456789")) == [b"0123456789"]


def test_oversize_header_fails_before_the_body_arrives() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(b"\x00\x00") == []
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(struct.pack(">I", 11)[2:])  # header complete, no body byte sent
    assert caught.value.code == E_TOO_LARGE
    assert "11" in caught.value.message and "10" in caught.value.message
    assert decoder.pending == 0


def test_oversize_after_good_frames_in_the_same_feed_still_fails() -> None:
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(encode_frame(b"ok") + struct.pack(">I", 2**32 - 1))
    assert caught.value.code == E_TOO_LARGE


def test_zero_length_frame_is_malformed() -> None:
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(b"\x00\x00\x00\x00")
    assert caught.value.code == E_MALFORMED


def test_a_failed_decoder_stays_failed() -> None:
    decoder = FrameDecoder(max_frame=10)
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", 1000))
    for _ in range(2):
        with pytest.raises(ProtocolError) as caught:
            decoder.feed(encode_frame(b"fine"))
        assert caught.value.code == E_TOO_LARGE


@pytest.mark.parametrize("max_frame", [0, -1, 2**32])
def test_max_frame_must_fit_the_header(max_frame: int) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=max_frame)


def test_frames_carry_codec_messages() -> None:
    decoder = FrameDecoder(max_frame=DEFAULT_MAX_FRAME)
    frames = decoder.feed(encode_frame(encode(Ping(ref="1"))) + encode_frame(encode(Ping())))
    assert [decode(frame) for frame in frames] == [Ping(ref="1"), Ping()]


@settings(max_examples=300)
@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=10),
    st.lists(st.integers(0, 4000), max_size=10),
)
def test_any_chunking_reassembles(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(payload) for payload in payloads)
    bounds = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    decoder = FrameDecoder(max_frame=300)
    frames: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        frames += decoder.feed(stream[start:end])
    assert frames == payloads
    assert decoder.pending == 0


@settings(max_examples=1000)
@given(st.lists(st.binary(max_size=64), max_size=8), st.integers(1, 100))
def test_garbage_raises_nothing_but_protocol_error(chunks: list[bytes], max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    for chunk in chunks:
        try:
            frames = decoder.feed(chunk)
        except ProtocolError as exc:
            assert exc.code in {E_TOO_LARGE, E_MALFORMED}
            return
        assert all(0 < len(frame) <= max_frame for frame in frames)
