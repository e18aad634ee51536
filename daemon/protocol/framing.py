"""Length-prefixed frames for the TCP transport, sans-io.

Rules of this module:

- A frame is a 4-byte unsigned big-endian length N followed by N bytes of payload. N counts the
  payload only, not the header. A payload is one JSON message (see
  :mod:`~schedd.protocol.codec`), or, when its first byte is the type byte ``0x00`` (which no
  JSON text starts with), an attachment frame: the bytes after the type byte are one attachment
  of the message before it (:mod:`~schedd.protocol.attachments`), returned as a
  :class:`~schedd.protocol.attachments.Blob`.
- N = 0 is not a frame: ``E_MALFORMED``. N above the decoder's ``max_frame`` is ``E_TOO_LARGE``,
  raised as soon as the header is read, before any of the body is waited for, so a peer cannot
  make the daemon buffer an oversize body; an attachment frame may be larger, up to
  ``max_blob`` bytes after its type byte, which the decoder reads (one byte) before it decides.
- A :class:`FrameDecoder` that raised is broken for good: the stream has lost its framing, and
  every later :meth:`~FrameDecoder.feed` raises the same error. The caller sends an ``error`` and
  closes the connection.
- The module does no I/O: the transport reads bytes, feeds them, and writes what
  :func:`encode_frame` returns.
"""

from __future__ import annotations

import struct
from typing import Final, NoReturn

from schedd.errors import ProtocolError
from schedd.protocol.attachments import Blob
from schedd.protocol.codec import E_MALFORMED, E_TOO_LARGE

__all__ = ["BLOB_TAG", "DEFAULT_MAX_FRAME", "HEADER_SIZE", "FrameDecoder", "encode_frame"]

HEADER_SIZE: Final = 4
"""Bytes of the length prefix."""
DEFAULT_MAX_FRAME: Final = 1 << 20
"""Default largest payload (1 MiB) for transports whose configuration sets none."""
_LARGEST: Final = 2**32 - 1  # what 4 bytes can declare
_HEADER: Final = struct.Struct(">I")
BLOB_TAG: Final = b"\x00"
"""The type byte that starts an attachment frame's payload."""


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its length (and the type byte, for a
    :class:`~schedd.protocol.attachments.Blob`). Raises ``ValueError`` for an empty or >4 GiB
    payload."""
    if isinstance(payload, Blob):
        payload = BLOB_TAG + payload
    size = len(payload)
    if not 0 < size <= _LARGEST:
        raise ValueError(f"a frame payload must be 1 to {_LARGEST} bytes, not {size}")
    return _HEADER.pack(size) + payload


class FrameDecoder:
    """Cut a byte stream into frame payloads.

    :param max_frame: the largest payload accepted, in bytes (1 to 2**32 - 1).
    :param max_blob: the largest attachment accepted, in bytes; ``None`` (the default): the
        stream has no attachment frames, and every payload is returned as it is.
    """

    __slots__ = ("_buffer", "_error", "max_blob", "max_frame")

    def __init__(self, max_frame: int, max_blob: int | None = None) -> None:
        if not 1 <= max_frame <= _LARGEST:
            raise ValueError(f"max_frame must be 1 to {_LARGEST}, not {max_frame}")
        self.max_frame = max_frame
        self.max_blob = -1 if max_blob is None else min(max_blob, _LARGEST - 1)
        self._buffer = bytearray()
        self._error: tuple[str, str] | None = None

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame (non-zero at EOF: a cut frame)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add received bytes; return the payloads of every frame now complete, in order
        (an attachment frame's as a :class:`~schedd.protocol.attachments.Blob`, without its
        type byte).

        Raises :class:`~schedd.errors.ProtocolError` (``E_TOO_LARGE`` or ``E_MALFORMED``) when
        the stream breaks the framing rules, and again on every later call.
        """
        if self._error is not None:
            raise ProtocolError(*self._error)
        buffer = self._buffer
        buffer += data
        end = len(buffer)
        frames: list[bytes] = []
        start = 0
        while end - start >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(buffer, start)
            body = start + HEADER_SIZE
            if size > self.max_frame:
                if size > self.max_blob + 1:
                    self._too_large(size)
                if end == body:
                    break  # its type byte decides which limit holds
                if buffer[body] != 0:
                    self._too_large(size)
            if size == 0:
                self._fail(E_MALFORMED, "empty frame (length 0)")
            if end - body < size:
                break
            if buffer[body] == 0 and self.max_blob >= 0:
                frames.append(Blob(buffer[body + 1 : body + size]))
            else:
                frames.append(bytes(buffer[body : body + size]))
            start = body + size
        if start:
            del buffer[:start]
        return frames

    def _too_large(self, size: int) -> NoReturn:
        blobs = (f" (attachment frames: {self.max_blob} bytes after the type byte)"
                 if self.max_blob >= 0 else "")
        self._fail(E_TOO_LARGE,
                   f"frame of {size} bytes exceeds the limit of {self.max_frame}{blobs}")

    def _fail(self, code: str, message: str) -> NoReturn:
        self._error = (code, message)
        self._buffer.clear()
        raise ProtocolError(code, message)
