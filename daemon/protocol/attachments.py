"""Binary attachments beside a JSON message, sans-io.

Rules of this module:

- A message that carries binary data (``submit``, ``assign``, ``result``, ``done``, ``job``)
  declares it in its ``attachments`` field: a list of ``{name, size, media_type}``. The bytes
  follow the message, one attachment frame per declared attachment, in declaration order, with
  nothing in between: on WebSocket a binary frame each, on TCP a frame whose payload starts with
  the type byte ``0x00`` (:mod:`~schedd.protocol.framing`). The bytes are never base64.
- :class:`Blob` marks an attachment frame's payload, so a channel knows which kind of frame to
  write and a reader can tell one it read apart from a JSON message.
- Limits are checked on the declaration, before any attachment frame is buffered: a declared
  attachment over ``max_attachment`` bytes is ``E_TOO_LARGE`` and ends the connection (its
  frame would be over the transport's frame limit, so the stream cannot be resynchronised);
  declared attachments that together pass ``max_attachments`` bytes are ``E_TOO_LARGE`` for
  that message only: the collector drops the frames that follow it, each within the frame limit,
  and the connection goes on.
- Frames that do not match their declaration (a JSON message before the last declared frame, a
  size other than declared, an attachment frame no message declared) are ``E_ATTACHMENT``; the
  stream's framing is then in doubt, so the connection is closed. What was accepted before the
  broken message stays accepted; the broken message is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, NoReturn

from schedd.errors import ProtocolError
from schedd.protocol.codec import E_ATTACHMENT, E_TOO_LARGE, decode, encode
from schedd.protocol.messages import Attachment, Message

__all__ = [
    "DEFAULT_MAX_ATTACHMENT",
    "DEFAULT_MAX_ATTACHMENTS",
    "SDK_MAX_ATTACHMENT",
    "AttachmentError",
    "Blob",
    "Collector",
    "attachment_specs",
    "declared",
    "message_frames",
]

DEFAULT_MAX_ATTACHMENT: Final = 4 << 20
"""Default largest attachment (4 MiB): ``[limits] max_attachment``."""
DEFAULT_MAX_ATTACHMENTS: Final = 8 << 20
"""Default largest sum of one message's attachments (8 MiB): ``[limits] max_attachments``."""
SDK_MAX_ATTACHMENT: Final = 1 << 28
"""Largest attachment the SDK accepts from a daemon (256 MiB): what a daemon sends is within
its own limits, which a deployment may raise far above their defaults."""


class Blob(bytes):
    """The payload of one attachment frame (not a JSON message)."""

    __slots__ = ()


class AttachmentError(ProtocolError):
    """A message's attachments are refused. ``close``: the connection must end (its framing
    cannot be trusted or resynchronised); otherwise only this message is refused."""

    def __init__(self, code: str, message: str, *, close: bool) -> None:
        super().__init__(code, message)
        self.close = close


def declared(message: Message) -> list[Attachment]:
    """The attachments ``message`` declares (none for a message type that carries none)."""
    specs: list[Attachment] = getattr(message, "attachments", None) or []
    return specs


def attachment_specs(items: Sequence[tuple[str, str, bytes | bytearray | memoryview]],
                     ) -> list[Attachment]:
    """Declarations for ``(name, media_type, data)`` items, in order."""
    return [Attachment(name=name, size=len(data), media_type=media)
            for name, media, data in items]


def message_frames(message: Message, data: Sequence[bytes | bytearray | memoryview]
                   ) -> list[bytes]:
    """The frames that send ``message`` and its attachments: its JSON, then one :class:`Blob`
    per declared attachment. ``ValueError`` if ``data`` does not match the declaration."""
    specs = declared(message)
    if len(specs) != len(data):
        raise ValueError(f"{message.TYPE} declares {len(specs)} attachments, {len(data)} given")
    frames = [encode(message)]
    for spec, item in zip(specs, data, strict=True):
        if len(item) != spec.size:
            raise ValueError(f"attachment {spec.name!r} declares {spec.size} bytes, "
                             f"{len(item)} given")
        frames.append(Blob(item))
    return frames


class Collector:
    """Gathers, for one connection, the attachment frames that follow a declaring message.

    Feed every message read to :meth:`start` and every attachment frame to :meth:`add`; a
    message is complete when :meth:`start` returns an empty list or :meth:`add` returns the
    data. One collector per direction of a connection.

    :param max_attachment: largest attachment, in bytes.
    :param max_attachments: largest sum of one message's attachments, in bytes.
    """

    __slots__ = ("_data", "_dropping", "_message", "_specs", "max_attachment", "max_attachments")

    def __init__(self, max_attachment: int = DEFAULT_MAX_ATTACHMENT,
                 max_attachments: int = DEFAULT_MAX_ATTACHMENTS) -> None:
        self.max_attachment = max_attachment
        self.max_attachments = max_attachments
        self._message: Message | None = None
        self._specs: list[Attachment] = []
        self._data: list[bytes] = []
        self._dropping = False

    @property
    def waiting(self) -> bool:
        """Attachment frames are expected before the next message."""
        return len(self._data) < len(self._specs)

    def start(self, message: Message) -> list[bytes] | None:
        """A message arrived. Returns ``[]`` when it declares no attachment (it is complete),
        ``None`` when its frames are to be collected with :meth:`add`. Raises
        :class:`AttachmentError` when frames were still expected (``E_ATTACHMENT``) or the
        declaration is over a limit (``E_TOO_LARGE``: see the module rules)."""
        if self.waiting:
            self._fail(f"a {message.TYPE} message arrived where attachment "
                       f"{len(self._data) + 1} of {len(self._specs)} was expected")
        specs = declared(message)
        self._message, self._specs, self._data, self._dropping = message, specs, [], False
        if not specs:
            return []
        total = 0
        for spec in specs:
            if spec.size > self.max_attachment:
                self._specs = []
                raise AttachmentError(
                    E_TOO_LARGE, f"attachment {spec.name!r} of {spec.size} bytes exceeds the "
                    f"limit of {self.max_attachment} bytes per attachment (max_attachment)",
                    close=True)
            total += spec.size
        if total > self.max_attachments:
            self._dropping = True  # the frames that follow are read and dropped
            raise AttachmentError(
                E_TOO_LARGE, f"attachments of {total} bytes exceed the limit of "
                f"{self.max_attachments} bytes per message (max_attachments); the message is "
                "refused", close=False)
        return None

    def add(self, frame: bytes) -> tuple[Message, list[bytes]] | None:
        """An attachment frame arrived: the message and its data once its last frame is in,
        else ``None`` (always for a message refused over ``max_attachments``: its frames are
        dropped). Raises :class:`AttachmentError` (``E_ATTACHMENT``) for a frame no message
        declared or of a size other than declared."""
        if not self.waiting:
            self._fail(f"an attachment frame of {len(frame)} bytes that no message declared")
        spec = self._specs[len(self._data)]
        if len(frame) != spec.size:
            self._fail(f"attachment {spec.name!r} declared {spec.size} bytes, its frame has "
                       f"{len(frame)}")
        self._data.append(b"" if self._dropping else frame)
        if self.waiting:
            return None
        message, data = self._message, self._data
        self._data, self._specs, self._message = [], [], None
        if self._dropping or message is None:
            return None
        return message, data

    def receive(self, raw: bytes | str, *, untagged_blobs: bool,
                decode: Callable[[bytes | str], Message] = decode,
                ) -> tuple[Message, list[bytes]] | None:
        """One frame a channel read: the message it completes, with its attachments' data (a
        message that declares none: ``[]``), or None while attachment frames are to come. An
        attachment frame is a :class:`Blob`, or, with ``untagged_blobs`` (WebSocket), any
        binary frame while attachments are awaited; a message is decoded with ``decode``.
        Raises what ``decode``, :meth:`start` and :meth:`add` raise."""
        if isinstance(raw, Blob) or (untagged_blobs and self.waiting and isinstance(raw, bytes)):
            return self.add(raw)
        message = decode(raw)
        return None if self.start(message) is None else (message, [])

    @property
    def message(self) -> Message | None:
        """The message whose attachments are being collected."""
        return self._message

    def _fail(self, why: str) -> NoReturn:
        self._specs, self._data, self._message = [], [], None
        raise AttachmentError(E_ATTACHMENT, why, close=True)
