"""The channels' own decoding of common WebSocket frames (schedd.protocol.wsframes), checked against
wsproto: the same messages, in the same order, whatever the reads, on either end."""

from __future__ import annotations

import random
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)

from schedd.protocol.wsframes import (
    FrameSplitter,
    HeadSplitter,
    MaskKeys,
    encode_message,
    unmask,
)

LIMIT = 1 << 20


def _pair() -> tuple[WSConnection, WSConnection]:
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    assert any(isinstance(e, Request) for e in server.events())
    client.receive_data(server.send(AcceptConnection()))
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    return client, server


def _stream(client: WSConnection) -> tuple[bytes, list[Any]]:
    """A peer's bytes holding every kind of frame (masked if ``client`` is a client's), and
    what the other end should make of them."""
    big = "x" * 70_000  # a 64-bit length: wsproto's
    parts = [
        client.send(TextMessage(data='{"type":"heartbeat"}')),
        client.send(Ping(payload=b"p1")),
        client.send(TextMessage(data="é" * 70)),  # 140 bytes: a 16-bit length
        client.send(BytesMessage(data=b"\x00\x01binary")),
        client.send(TextMessage(data="frag-", message_finished=False)),
        client.send(Ping(payload=b"p2")),  # a control frame inside a fragmented message
        client.send(TextMessage(data="mented", message_finished=True)),
        client.send(TextMessage(data="")),
        client.send(TextMessage(data=big)),
        client.send(TextMessage(data="after")),
        client.send(CloseConnection(code=1000)),
    ]
    expected = ['{"type":"heartbeat"}', ("ping", b"p1"), "é" * 70, b"\x00\x01binary",
                ("ping", b"p2"), "frag-mented", "", big, "after", ("close", 1000)]
    return b"".join(parts), expected


def _serve(server: WSConnection, chunks: list[bytes], limit: int = LIMIT) -> tuple[list[Any], int]:
    """What ``server`` (either end, despite the name) makes of ``chunks`` through the splitter
    and wsproto, as the channel does; and how many bytes went to wsproto."""
    splitter = FrameSplitter(limit, server=not server.client)
    got: list[Any] = []
    parts: list[Any] = []
    to_wsproto = 0

    def drain() -> None:
        for event in server.events():
            if isinstance(event, Message):
                parts.append(event.data)
                if event.message_finished:
                    got.append(type(parts[0])().join(parts))
                    parts.clear()
            elif isinstance(event, Ping):
                got.append(("ping", bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                got.append(("close", event.code))

    for chunk in chunks:
        for decoded, value in splitter.feed(chunk):
            if decoded:
                drain()  # what wsproto has goes first
                got.append(value)
            else:
                assert isinstance(value, bytes)
                to_wsproto += len(value)
                server.receive_data(value)
        drain()
    return got, to_wsproto


def test_whole_stream_in_one_read() -> None:
    client, server = _pair()
    data, expected = _stream(client)
    got, _ = _serve(server, [data])
    assert got == expected


def _ends(side: str) -> tuple[WSConnection, WSConnection]:
    """(sender, reader): a client's frames read by a server, or the other way round."""
    client, server = _pair()
    return (client, server) if side == "server" else (server, client)


@pytest.mark.parametrize("side", ["server", "client"])
@pytest.mark.parametrize("seed", range(30))
def test_any_split_of_the_reads(seed: int, side: str) -> None:
    client, server = _ends(side)
    data, expected = _stream(client)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 40)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    got, _ = _serve(server, chunks)
    assert got == expected


def test_every_split_of_one_small_frame_keeps_it_whole() -> None:
    client, _ = _pair()
    frame = client.send(TextMessage(data="hello"))
    for cut in range(1, len(frame)):
        _, server = _pair()
        got, _ = _serve(server, [frame[:cut], frame[cut:]])
        assert got == ["hello"], cut


@pytest.mark.parametrize("side", ["server", "client"])
def test_complete_small_messages_never_reach_wsproto(side: str) -> None:
    client, server = _ends(side)
    data = b"".join(client.send(TextMessage(data=f"m{i}")) for i in range(50))
    data += client.send(BytesMessage(data=b"\xff" * 300))
    got, to_wsproto = _serve(server, [data])
    assert got == [f"m{i}" for i in range(50)] + [b"\xff" * 300]
    assert to_wsproto == 0


def _frame(first: int, payload: bytes, *, masked: bool = True) -> bytes:
    key = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    if not masked:
        return bytes((first, len(payload))) + payload
    return bytes((first, 0x80 | len(payload))) + key + unmask(payload, key)


@pytest.mark.parametrize(("frame", "close_code"), [
    (_frame(0x81, b"\xc3\x28"), 1007),  # invalid UTF-8
    (_frame(0x81, b"plain", masked=False), 1002),  # a client's frame must be masked
    (_frame(0xC1, b"rsv1"), 1002),  # an extension bit nobody negotiated
    (_frame(0x83, b"op3"), 1002),  # a reserved opcode
    (_frame(0x80, b"cont"), 1002),  # a continuation with nothing to continue
])
def test_what_wsproto_refuses_still_goes_to_wsproto(frame: bytes, close_code: int) -> None:
    _, server = _pair()
    got, to_wsproto = _serve(server, [frame])
    assert to_wsproto == len(frame)
    assert got == [("close", close_code)]


@pytest.mark.parametrize(("frame", "close_code"), [
    (_frame(0x81, b"masked"), 1002),  # a server's frame must not be masked
    (b"\x81\x02\xc3\x28", 1007),  # invalid UTF-8
])
def test_what_a_client_must_refuse_goes_to_wsproto(frame: bytes, close_code: int) -> None:
    client, _ = _pair()
    got, to_wsproto = _serve(client, [frame])
    assert to_wsproto == len(frame)
    assert got == [("close", close_code)]


def test_a_message_above_the_limit_goes_to_wsproto() -> None:
    client, server = _pair()
    frame = client.send(TextMessage(data="x" * 100))
    got, to_wsproto = _serve(server, [frame], limit=99)
    assert got == ["x" * 100] and to_wsproto == len(frame)  # the channel then refuses it


def test_release_returns_a_held_header() -> None:
    client, _ = _pair()
    frame = client.send(TextMessage(data="x" * 200))  # a 4-byte header, then the mask
    splitter = FrameSplitter(LIMIT)
    assert splitter.feed(frame[:3]) == []
    assert splitter.release() == frame[:3]
    assert splitter.release() == b""


def _handshake_bytes() -> tuple[bytes, bytes]:
    """A real upgrade request and its 101 response."""
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    request = client.send(Request(host="h", target="/"))
    server.receive_data(request)
    assert any(isinstance(e, Request) for e in server.events())
    return request, server.send(AcceptConnection())


@pytest.mark.parametrize("which", ["request", "response"])
def test_the_head_splitter_cuts_at_the_end_of_the_head_at_every_split(which: str) -> None:
    request, response = _handshake_bytes()
    head = request if which == "request" else response
    frames = encode_message(b"m0", text=True, masked=False) + b"\x81\x02m1"
    data = head + frames
    for cut in range(len(data) + 1):
        splitter = HeadSplitter()
        parts = [splitter.feed(data[:cut]), splitter.feed(data[cut:])]
        assert b"".join(p[0] for p in parts) == head, cut
        assert b"".join(p[1] for p in parts) == frames, cut
        assert splitter.done
        assert splitter.feed(b"later") == (b"", b"later")


def test_the_head_splitter_feeds_the_end_of_the_stream_and_never_invents_an_end() -> None:
    splitter = HeadSplitter()
    assert splitter.chunks(b"HTTP/1.1 101 OK\r\n") == [b"HTTP/1.1 101 OK\r\n"]
    assert splitter.chunks(b"") == [None]  # the peer left: wsproto says what that means
    assert not splitter.done
    bare = HeadSplitter()  # a head ended by bare line feeds is not found: all goes to wsproto
    assert bare.chunks(b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n\x81\x01x") == [
        b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n\x81\x01x"]
    assert not bare.done
    ended = HeadSplitter()
    assert ended.chunks(b"GET / HTTP/1.1\r\n\r\nrest") == [b"GET / HTTP/1.1\r\n\r\n", b"rest"]


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 1000])
def test_unmask_is_its_own_inverse(size: int) -> None:
    payload = bytes(random.Random(size).getrandbits(8) for _ in range(size))
    key = b"\xa1\xb2\xc3\xd4"
    masked = unmask(payload, key)
    assert len(masked) == size
    assert unmask(masked, key) == payload
    if size:
        assert masked[0] == payload[0] ^ 0xA1


# -- the server channel ----------------------------------------------------------------------


@pytest.mark.parametrize("hub", [False, True])
async def test_the_server_channel_decodes_simple_frames_itself_and_keeps_the_order(
        hub: bool) -> None:
    import socket

    import trio

    from schedd.transport import WebSocketChannel
    from schedd.transport.readiness import ReadinessHub

    ours, theirs = socket.socketpair()
    client, server_ws = _pair()
    fed: list[bytes] = []
    real = server_ws.receive_data

    def counting(data: bytes | None) -> None:
        fed.append(b"" if data is None else bytes(data))
        real(data)

    server_ws.receive_data = counting  # type: ignore[method-assign]
    readiness = ReadinessHub()
    async with trio.open_nursery() as nursery:
        if hub:
            await nursery.start(readiness.serve)
        channel = WebSocketChannel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)),
                                   server_ws, "peer", LIMIT, hub=readiness if hub else None)
        with trio.fail_after(5):
            theirs.sendall(b"".join(client.send(TextMessage(data=f"m{i}")) for i in range(3)))
            assert [await channel.receive() for _ in range(3)] == ["m0", "m1", "m2"]
            assert fed == []  # none of it went through wsproto
            theirs.sendall(
                client.send(TextMessage(data="frag-", message_finished=False))
                + client.send(Ping(payload=b"p"))
                + client.send(TextMessage(data="mented", message_finished=True))
                + client.send(BytesMessage(data=b"after")))
            assert await channel.receive() == "frag-mented"
            assert await channel.receive() == b"after"
            assert fed  # the fragments and the ping did
            client.receive_data(theirs.recv(65536))  # the pong, answered by receive
            assert [type(e).__name__ for e in client.events()] == ["Pong"]
        await channel.aclose()
        nursery.cancel_scope.cancel()
    theirs.close()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
@pytest.mark.parametrize("text", [True, False])
def test_encoded_messages_are_read_by_wsproto_both_ways(size: int, text: bool) -> None:
    payload = ("é" * (size // 2) + "x" * (size % 2)).encode() if text else bytes(size)
    client, server = _pair()
    for sender, receiver, masked in ((client, server, True), (server, client, False)):
        frame = encode_message(payload, text=text, masked=masked)
        assert bool(frame[1] & 0x80) == masked
        receiver.receive_data(frame)
        parts = [e for e in receiver.events() if isinstance(e, Message)]
        assert parts and parts[-1].message_finished
        data = type(parts[0].data)().join(p.data for p in parts)
        assert data == (payload.decode() if text else payload)
        assert isinstance(parts[0], TextMessage if text else BytesMessage)
        # wsproto keeps sending on the same connection: it holds no state about our frames
        receiver.receive_data(sender.send(TextMessage(data="next")))
        assert [e.data for e in receiver.events() if isinstance(e, Message)] == ["next"]


def test_masking_keys_differ_per_frame() -> None:
    frames = {encode_message(b"same", text=True, masked=True) for _ in range(20)}
    assert len(frames) > 1
    assert encode_message(b"same", text=True, masked=False) == b"\x81\x04same"
    keys = MaskKeys()
    frames = {encode_message(b"same", text=True, masked=True, keys=keys) for _ in range(600)}
    assert len(frames) > 590  # 32 random bits each: a repeat or two at most, by chance


def test_mask_keys_are_drawn_in_bulk_and_each_used_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    draws: list[bytes] = []

    def urandom(n: int) -> bytes:
        draws.append(os.getrandom(n) if hasattr(os, "getrandom") else bytes(n))
        return draws[-1]

    keys = MaskKeys()
    monkeypatch.setattr("schedd.protocol.wsframes.os.urandom", urandom)
    got = [keys.next() for _ in range(600)]
    assert [len(draw) for draw in draws] == [1024, 1024, 1024]  # 256 keys a draw
    assert all(len(key) == 4 for key in got)
    assert b"".join(got) == b"".join(draws)[:2400]  # in order, none skipped or repeated


@pytest.mark.parametrize("size", [0, 5, 126, 70_000])
def test_a_frame_masked_with_pooled_keys_reads_back(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    keys = MaskKeys()
    _client, server = _pair()
    for _ in range(3):
        frame = encode_message(payload, text=False, masked=True, keys=keys)
        server.receive_data(frame)
        parts = [e for e in server.events() if isinstance(e, Message)]
        assert b"".join(bytes(p.data) for p in parts) == payload


async def test_the_channel_refuses_to_send_bad_text_or_on_a_closing_connection() -> None:
    from schedd.transport.channel import ChannelClosed
    from tests.websockets import websocket_channels

    server, client = websocket_channels()
    with pytest.raises(UnicodeDecodeError):
        await client.send(b"\xff\xfe")  # text must be UTF-8
    await client.send("é".encode())
    assert await server.receive() == "é"
    await server.aclose()  # sends its close: the client's wsproto is closing once it reads it
    with pytest.raises(ChannelClosed):
        await client.receive()
    with pytest.raises(ChannelClosed, match="closing"):
        await client.send(b"{}")
    await client.aclose()


# -- what comes with the handshake -------------------------------------------------------------


async def test_a_client_decodes_the_frames_that_came_with_the_handshake_response() -> None:
    """The response's head goes to wsproto, the frames behind it (same write) to the channel,
    which decodes them itself, in order, before what comes later."""
    import socket

    import trio

    from schedd.sdk.connect import _parse_url, _websocket_handshake
    from schedd.transport import WebSocketChannel

    ours, theirs = socket.socketpair()
    server = WSConnection(ConnectionType.SERVER)
    first = b"".join(encode_message(f"m{i}".encode(), text=True, masked=False) for i in range(3))

    async def serve() -> None:
        peer = trio.socket.from_stdlib_socket(theirs)
        while not any(isinstance(e, Request) for e in server.events()):
            server.receive_data(await peer.recv(65536))
        await peer.send(server.send(AcceptConnection()) + first)  # one write

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            ws, leftover = await _websocket_handshake(stream, _parse_url("ws://h/", None))
        assert leftover == first
        channel = WebSocketChannel(stream, ws, "server", LIMIT, leftover=leftover)
        fed: list[bytes | None] = []
        real = ws.receive_data

        def spy(data: bytes | None) -> None:
            fed.append(data)
            return real(data)

        ws.receive_data = spy  # type: ignore[method-assign]
        theirs.sendall(encode_message(b"m3", text=True, masked=False))
        assert [await channel.receive() for _ in range(4)] == ["m0", "m1", "m2", "m3"]
        assert fed == []  # none of it went through wsproto
        await channel.aclose()
    theirs.close()


async def test_a_response_head_ended_by_bare_line_feeds_leaves_the_frames_to_wsproto() -> None:
    """wsproto accepts a head whose lines end in a bare LF; its end is not found, wsproto keeps
    what followed it, and the client channel decodes with wsproto only: nothing is lost."""
    import socket

    import trio

    from schedd.sdk.connect import _parse_url, _websocket_handshake
    from schedd.transport import WebSocketChannel

    ours, theirs = socket.socketpair()
    server = WSConnection(ConnectionType.SERVER)
    m0 = encode_message(b"m0" * 10, text=True, masked=False)

    async def serve() -> None:
        peer = trio.socket.from_stdlib_socket(theirs)
        while not any(isinstance(e, Request) for e in server.events()):
            server.receive_data(await peer.recv(65536))
        response = server.send(AcceptConnection()).replace(b"\r\n", b"\n")
        await peer.send(response + m0[:3])  # and the start of a frame

    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            ws, leftover = await _websocket_handshake(stream, _parse_url("ws://h/", None))
        assert leftover is None
        channel = WebSocketChannel(stream, ws, "server", LIMIT, leftover=leftover)
        assert channel._frames is None  # wsproto alone: it holds the start of a frame
        theirs.sendall(m0[3:] + encode_message(b"m1", text=True, masked=False))
        assert [await channel.receive() for _ in range(2)] == ["m0" * 10, "m1"]
        await channel.aclose()
    theirs.close()


async def test_a_client_without_the_bytes_behind_the_head_leaves_decoding_to_wsproto() -> None:
    """A client channel not told what followed the handshake (its wsproto may hold the start
    of a frame) decodes with wsproto only."""
    import socket

    import trio

    from schedd.transport import WebSocketChannel

    ours, theirs = socket.socketpair()
    client, _ = _pair()
    client.receive_data(encode_message(b"held", text=True, masked=False)[:3])  # half a frame
    channel = WebSocketChannel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), client,
                               "server", LIMIT)
    assert channel._frames is None  # (misaligned, the splitter could misread a frame)
    theirs.sendall(encode_message(b"held", text=True, masked=False)[3:]
                   + encode_message(b"next", text=True, masked=False))
    with trio.fail_after(5):
        assert [await channel.receive() for _ in range(2)] == ["held", "next"]
    await channel.aclose()
    theirs.close()


@pytest.mark.parametrize("hub", [False, True])
async def test_a_server_reads_frames_sent_right_behind_the_upgrade_request(hub: bool) -> None:
    """wsproto's server drops what follows the request in the same read; the transport's
    handshake feeds it the head only and the channel reads the rest first."""
    import socket

    import trio

    from schedd.plugins.transport_ws import accept_upgrade
    from schedd.transport import WebSocketChannel
    from schedd.transport.readiness import ReadinessHub

    ours, theirs = socket.socketpair()
    client = WSConnection(ConnectionType.CLIENT)
    # (wsproto will not send frames before the answer: built by hand)
    early = encode_message(b"early", text=True, masked=True) + _frame(0x89, b"p")
    theirs.sendall(client.send(Request(host="h", target="/")) + early)  # one write
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    readiness = ReadinessHub()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            if hub:
                await nursery.start(readiness.serve)
            upgraded = await accept_upgrade(stream, "/", "peer")
            assert upgraded is not None
            ws, leftover = upgraded
            assert leftover == early
            channel = WebSocketChannel(stream, ws, "peer", LIMIT, hub=readiness if hub else None,
                                       leftover=leftover)
            theirs.sendall(encode_message(b"later", text=True, masked=True))
            assert [await channel.receive() for _ in range(2)] == ["early", "later"]
            client.receive_data(theirs.recv(65536))  # the 101, then the pong
            assert [type(e).__name__ for e in client.events()] == ["AcceptConnection", "Pong"]
            await channel.aclose()
            nursery.cancel_scope.cancel()
    theirs.close()
