"""Decoding common WebSocket frames without wsproto (sans-io).

Rules of this module:

- **Why.** Nodes send small complete text messages (a heartbeat a second each); wsproto parses
  every frame in pure Python through generators and events, several times the cost of
  decoding a common frame directly (docs/decisions/0009-wsproto-without-trio-websocket.md); the
  SDK's nodes and clients receive as many (assignments, acknowledgements, done messages).
  :class:`FrameSplitter` decodes those frames itself
  and hands everything else to wsproto, whole and in order.
- **What is decoded here:** a frame that is complete in the bytes at hand, final (FIN), has no
  RSV bits (no extension), is masked if the reader is a server and unmasked if it is a client
  (as RFC 6455 requires of each peer), is text or binary, is not inside a fragmented message,
  carries at most ``limit`` bytes and a length below 65,536, and (text) is valid UTF-8.
  Anything else (control frames, fragments, continuation frames, oversize or invalid frames,
  frames split across reads) goes to wsproto, which answers, reassembles or refuses them as
  before.
- **Alignment.** wsproto must only ever hold whole frames or the start of the frame it is
  being fed, so the splitter reads every header itself: it keeps a header split across reads
  until it is whole, and feeds a frame it does not decode to wsproto to its last byte (across
  reads) before it looks at the next. It must start at a frame boundary: right after the HTTP
  head of the handshake. So both handshakes (the SDK's client, the daemon's transport) feed
  wsproto the head only (:class:`HeadSplitter` finds where it ends) and hand what followed it
  to the channel, which reads it first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

from wsproto import WSConnection
from wsproto.events import Event

__all__ = ["FrameSplitter", "HeadSplitter", "MaskKeys", "encode_message", "handshake_events",
           "unmask"]

_FIN: Final = 0x80
_RSV: Final = 0x70
_OPCODE: Final = 0x0F
_MASKED: Final = 0x80
_TEXT: Final = 0x1
_BINARY: Final = 0x2
_CONTINUATION: Final = 0x0
_CONTROL: Final = 0x8


class HeadSplitter:
    """Splits what a handshake reads into the HTTP head, fed to wsproto as it arrives, and what
    follows it: the first frames, which a channel reads from a frame boundary (see the module).
    wsproto keeps what follows a response's head and drops what follows a request's."""

    __slots__ = ("_tail", "done")

    def __init__(self) -> None:
        self._tail = b""  # the last bytes of the head so far: its end may span two reads
        self.done = False  # the head has ended

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """(the part of ``data`` that belongs to the head, the part after it)."""
        if self.done:
            return b"", data
        probe = self._tail + data
        end = probe.find(b"\r\n\r\n")
        if end < 0:
            self._tail = probe[-3:]
            return data, b""
        self.done = True
        cut = end + 4 - len(self._tail)
        return data[:cut], data[cut:]

    def chunks(self, data: bytes) -> list[bytes | None]:
        """What to feed wsproto, in order, for one read: the head's part, what followed it,
        then the end of the stream (None) when ``data`` is empty."""
        head, rest = self.feed(data)
        return [part for part in (head, rest) if part] + ([] if data else [None])


def unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte masking ``key`` (RFC 6455 §5.3)."""
    n = len(payload)
    if not n:
        return b""
    keys = key * (n // 4 + 1)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys[:n], "big")).to_bytes(n, "big")


class MaskKeys:
    """The masking keys of one connection's frames, drawn from ``os.urandom`` (RFC 6455 §5.3:
    a strong source of entropy) :data:`_KEYS_PER_DRAW` at a time rather than one system call
    per frame. Each key is used once. One connection's sends run on one thread (its event
    loop); an instance is not for several threads at once."""

    __slots__ = ("_at", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        """A fresh 4-byte key."""
        at = self._at
        if at >= len(self._pool):
            self._pool, at = os.urandom(4 * _KEYS_PER_DRAW), 0
        self._at = at + 4
        return self._pool[at:at + 4]


_KEYS_PER_DRAW: Final = 256


def encode_message(payload: bytes, *, text: bool, masked: bool,
                   keys: MaskKeys | None = None) -> bytes:
    """One complete (final, unfragmented) text or binary frame carrying ``payload`` (text:
    UTF-8 the caller vouches for), masked with a fresh random key when ``masked`` (a client's):
    the next of ``keys``, or one drawn for this frame alone.

    What wsproto makes of a whole message, without its per-message events and str round trip
    (docs/decisions/0009-wsproto-without-trio-websocket.md); wsproto keeps no state about
    complete messages it sends, so both may be used on one connection.
    """
    n = len(payload)
    first = _FIN | (_TEXT if text else _BINARY)
    mask_bit = _MASKED if masked else 0
    if n < 126:
        header = bytes((first, mask_bit | n))
    elif n < 65536:
        header = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if not masked:
        return header + payload
    key = keys.next() if keys is not None else os.urandom(4)
    return header + key + unmask(payload, key)


class FrameSplitter:
    """Splits what one end of a WebSocket reads into messages it decoded and bytes for wsproto.

    :param limit: the largest message decoded here, in bytes; larger ones go to wsproto (whose
        events the channel checks against its own limit).
    :param server: the reader is the server, whose peer masks every frame (True), or the
        client, whose peer masks none (False). A frame masked the other way goes to wsproto,
        which refuses it.
    """

    __slots__ = ("_fragmented", "_head", "_left", "limit", "masked")

    def __init__(self, limit: int, *, server: bool = True) -> None:
        self.limit = limit
        self.masked = _MASKED if server else 0  # the mask bit of the frames decoded here
        self._head = b""  # the start of a frame header, incomplete
        self._left = 0  # bytes of the current frame still to go to wsproto
        self._fragmented = False  # wsproto is inside a fragmented message

    def feed(self, data: bytes) -> list[tuple[bool, bytes | str]]:
        """What ``data`` holds, in the order it arrived: ``(True, message)`` for a message
        decoded here (``str`` text, ``bytes`` binary), ``(False, raw)`` for bytes to feed
        wsproto."""
        out: list[tuple[bool, bytes | str]] = []
        buf = self._head + data if self._head else data
        self._head = b""
        pos, end = 0, len(buf)
        while pos < end:
            left = self._left
            if left:
                stop = min(end, pos + left)
                out.append((False, buf[pos:stop]))
                self._left = left - (stop - pos)
                pos = stop
                continue
            if end - pos < 2:
                self._head = buf[pos:]
                break
            b0, b1 = buf[pos], buf[pos + 1]
            size = b1 & 0x7F
            start = pos + 2
            if size == 126:
                if end - pos < 4:
                    self._head = buf[pos:]
                    break
                size = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif size == 127:
                if end - pos < 10:
                    self._head = buf[pos:]
                    break
                size = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 10
            masked = b1 & _MASKED
            if masked:
                start += 4
            if start > end:
                self._head = buf[pos:]
                break
            stop = start + size
            opcode = b0 & _OPCODE
            if (stop <= end and b0 & (_FIN | _RSV) == _FIN and masked == self.masked
                    and size < 65536 and size <= self.limit and not self._fragmented
                    and opcode in (_TEXT, _BINARY)):
                payload = (unmask(buf[start:stop], buf[start - 4:start]) if masked
                           else buf[start:stop])
                if opcode == _BINARY:
                    out.append((True, payload))
                    pos = stop
                    continue
                try:
                    out.append((True, payload.decode()))
                except UnicodeDecodeError:
                    pass  # wsproto refuses it (E_MALFORMED, 1007)
                else:
                    pos = stop
                    continue
            if opcode < _CONTROL:  # a data frame: a non-final one opens (or continues) a message
                self._fragmented = not b0 & _FIN
            self._left = stop - pos
        return out

    def release(self) -> bytes:
        """The bytes held back (the start of a frame header), for wsproto when the splitter is
        no longer used."""
        head, self._head = self._head, b""
        return head


def handshake_events(
    ws: WSConnection, head: HeadSplitter, data: bytes,
) -> Iterator[tuple[Event, bytes | None]]:
    """Feed one handshake read to ``ws`` (the HTTP head only, see the module) and
    yield each event with what followed the head and was not fed: the bytes a channel built
    on that event reads first (``leftover``). None if the head's end was not found (a head
    ended by bare line feeds, which wsproto accepts): wsproto may then hold the start of a
    frame. Raises wsproto's ``RemoteProtocolError`` as ``receive_data`` does."""
    chunks = head.chunks(data)
    for i, chunk in enumerate(chunks):
        ws.receive_data(chunk)
        for event in ws.events():
            rest = b"".join(c for c in chunks[i + 1:] if c) if head.done else None
            yield event, rest
