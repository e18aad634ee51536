"""Decoding a WebSocket server's common frames without wsproto (sans-io).

Rules of this module:

- **Why.** Nodes send small complete text messages (a heartbeat a second each); wsproto parses
  every frame in pure Python through generators and events, ~10 µs a message, ~10 % of the
  daemon's CPU at 10,000 nodes (docs/benchmarks.md). :class:`FrameSplitter` decodes those
  frames itself, ~1.5 µs, and hands everything else to wsproto, whole and in order.
- **What is decoded here:** a frame that is complete in the bytes at hand, final (FIN), has no
  RSV bits (no extension), is masked (a client's), is text or binary, is not inside a
  fragmented message, carries at most ``limit`` bytes and a length below 65,536, and (text)
  is valid UTF-8. Anything else (control frames, fragments, continuation frames, oversize or
  invalid frames, frames split across reads) goes to wsproto, which answers, reassembles or
  refuses them as before.
- **Alignment.** wsproto must only ever hold whole frames or the start of the frame it is
  being fed, so the splitter reads every header itself: it keeps a header split across reads
  until it is whole, and feeds a frame it does not decode to wsproto to its last byte (across
  reads) before it looks at the next. It must start at a frame boundary: a server's wsproto
  connection right after the handshake (it keeps no bytes that followed the request). A
  client's may hold the start of a frame that came with the handshake response: do not use it
  there.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["FrameSplitter", "encode_message", "unmask"]

_FIN: Final = 0x80
_RSV: Final = 0x70
_OPCODE: Final = 0x0F
_MASKED: Final = 0x80
_TEXT: Final = 0x1
_BINARY: Final = 0x2
_CONTINUATION: Final = 0x0
_CONTROL: Final = 0x8


def unmask(payload: bytes, key: bytes) -> bytes:
    """``payload`` XOR the repeated 4-byte masking ``key`` (RFC 6455 §5.3)."""
    n = len(payload)
    if not n:
        return b""
    keys = key * (n // 4 + 1)
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys[:n], "big")).to_bytes(n, "big")


def encode_message(payload: bytes, *, text: bool, masked: bool) -> bytes:
    """One complete (final, unfragmented) text or binary frame carrying ``payload`` (text:
    UTF-8 the caller vouches for), masked with a fresh random key when ``masked`` (a client's).

    What wsproto makes of a whole message, without its per-message events and str round trip
    (~5 µs against ~1.3 µs for a heartbeat); wsproto keeps no state about complete messages it
    sends, so both may be used on one connection.
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
    key = os.urandom(4)
    return header + key + unmask(payload, key)


class FrameSplitter:
    """Splits what a WebSocket server reads into messages it decoded and bytes for wsproto.

    :param limit: the largest message decoded here, in bytes; larger ones go to wsproto (whose
        events the channel checks against its own limit).
    """

    __slots__ = ("_fragmented", "_head", "_left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
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
            if (stop <= end and b0 & (_FIN | _RSV) == _FIN and masked and size < 65536
                    and size <= self.limit and not self._fragmented
                    and opcode in (_TEXT, _BINARY)):
                payload = unmask(buf[start:stop], buf[start - 4:start])
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
