"""One job as a node's handler sees it: :class:`JobContext`, :class:`JobError`,
:class:`JobResult`, and the ``result`` an attempt's end becomes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Protocol, TypeAlias

import attrs

from schedd.protocol import (
    DEFAULT_MAX_FRAME,
    MAX_TEXT_LEN,
    Attachment,
    ErrorInfo,
    Result,
    encode,
)
from schedd.sdk._native import cancel_scope

#: the node's logger: what a job's end logs is the node's record
log = logging.getLogger("schedd.sdk.node")

E_NODE_EXCEPTION: Final = "E_NODE_EXCEPTION"
"""``result.error.code`` when a handler raised something other than :class:`JobError`."""


class JobError(Exception):
    """Raise from a handler to fail the job with ``code`` (an id, e.g. ``OOM``) and ``message``.

    ``retryable``: another node (or a later try) may succeed; the daemon retries the job
    elsewhere after a backoff while it has attempts left."""

    def __init__(self, code: str, message: str = "", *, retryable: bool = False) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retryable = retryable


DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"

# values: bytes, bytearray or memoryview, or (one of them, media type); checked when used
Attachments: TypeAlias = Mapping[str, Any] | Iterable[tuple[str, Any, str]]
"""Binary attachments as the SDK takes them: ``{name: bytes}``, ``{name: (bytes, media_type)}``
or ``[(name, bytes, media_type), ...]`` (order kept; the default media type is
``application/octet-stream``)."""


def attachment_items(attachments: Attachments | None) -> tuple[list[Attachment], list[bytes]]:
    """(their declarations, their bytes), in order, from any form :data:`Attachments` allows.
    Raises ``ValueError`` (``InvalidField``) for a name the protocol refuses or a repeated one,
    ``TypeError`` for data that is not bytes."""
    if not attachments:
        return [], []
    items: list[tuple[str, Any, str]] = []
    if isinstance(attachments, Mapping):
        for name, value in attachments.items():
            data, media = value if isinstance(value, tuple) else (value, DEFAULT_MEDIA_TYPE)
            items.append((name, data, media))
    else:
        items = [(name, data, media) for name, data, media in attachments]
    specs, blobs = [], []
    for name, data, media in items:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"attachment {name!r} must be bytes, not {type(data).__name__}")
        blob = bytes(data)
        specs.append(Attachment(name=name, size=len(blob), media_type=media))
        blobs.append(blob)
    if len({spec.name for spec in specs}) != len(specs):
        raise ValueError("attachment names must be unique")
    return specs, blobs


@attrs.frozen
class JobResult:
    """What a handler may return instead of a bare output: the ``output`` (JSON) and binary
    ``attachments`` (any form :data:`Attachments` allows) that go with it to the client, as
    bytes, never base64."""

    output: Any = None
    attachments: Attachments | None = None


class _Reports(Protocol):
    """What a job needs of its node (:class:`schedd.sdk.Node`): a way to report progress."""

    async def _send_progress(self, job: JobContext, data: Any) -> None: ...


class JobContext:
    """One attempt of one job, as the handler sees it.

    ``deadline_ms`` is the ``assign`` deadline (unix ms); the node has already accepted the
    attempt when the handler starts. ``traceparent`` and ``tracestate`` are the job's W3C trace
    context (``None`` from a daemon that sends none); :attr:`trace` is the same as a carrier.
    ``attachments`` holds the bytes of the submit's binary attachments by name (``{}`` for
    none), ``media_types`` their media types.
    """

    def __init__(
        self,
        node: _Reports,
        *,
        job_id: str,
        attempt: int,
        payload: Any,
        session_id: str | None,
        deadline_ms: int,
        traceparent: str | None = None,
        tracestate: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        media_types: Mapping[str, str] | None = None,
    ) -> None:
        self.attachments: dict[str, bytes] = dict(attachments or {})
        self.media_types: dict[str, str] = dict(media_types or {})
        self.job_id = job_id
        self.attempt = attempt
        self.payload = payload
        self.session_id = session_id
        self.deadline_ms = deadline_ms
        self.traceparent = traceparent
        self.tracestate = tracestate
        self._node = node
        # Created before the task starts, so a cancel that arrives first still takes effect.
        self._scope = cancel_scope()

    def __repr__(self) -> str:
        return f"<JobContext {self.job_id} attempt {self.attempt}>"

    @property
    def trace(self) -> dict[str, str]:
        """The trace context as W3C headers (``traceparent``, ``tracestate`` when present): a
        carrier for a tracer's propagator, e.g. OpenTelemetry's
        ``TraceContextTextMapPropagator().extract(job.trace)``."""
        headers = {}
        if self.traceparent is not None:
            headers["traceparent"] = self.traceparent
            if self.tracestate is not None:
                headers["tracestate"] = self.tracestate
        return headers

    @property
    def cancelled(self) -> bool:
        """True once the daemon cancelled this attempt (or it went stale)."""
        return self._scope.cancel_called

    async def progress(self, data: Any) -> None:
        """Send intermediate output to the job's client. Best effort: while the node is
        disconnected it is dropped. ``data`` must be JSON (``TypeError`` otherwise)."""
        await self._node._send_progress(self, data)


Handler = Callable[[JobContext], Awaitable[Any]]


def failure_result(
    ctx: JobContext, code: str, message: str, *, retryable: bool = False
) -> Result:
    """The ``result`` of an attempt that failed with ``code`` (kept valid, and short)."""
    if len(message) > MAX_TEXT_LEN:
        message = message[: MAX_TEXT_LEN - 3] + "..."
    try:
        error = ErrorInfo(code=code, message=message)
    except ValueError:  # not an id: keep the node's error readable anyway
        error = ErrorInfo(
            code=E_NODE_EXCEPTION, message=f"bad error code {code!r}: {message}"[:MAX_TEXT_LEN]
        )
    return Result(job_id=ctx.job_id, attempt=ctx.attempt, ok=False, error=error,
                  retryable=retryable)


def success_result(ctx: JobContext, output: Any) -> tuple[Result, list[bytes]]:
    """The ``result`` of an attempt that returned ``output`` (or a :class:`JobResult`), and the
    bytes of its attachments; a failure when it cannot go."""
    specs: list[Attachment] = []
    blobs: list[bytes] = []
    if isinstance(output, JobResult):
        try:
            specs, blobs = attachment_items(output.attachments)
        except (TypeError, ValueError) as exc:
            log.error("job %s attempt %d: bad attachments: %s", ctx.job_id, ctx.attempt, exc)
            return failure_result(ctx, E_NODE_EXCEPTION, f"bad attachments: {exc}"), []
        output = output.output
    try:
        result = Result(job_id=ctx.job_id, attempt=ctx.attempt, ok=True, output=output,
                        attachments=specs)
    except ValueError as exc:
        return failure_result(ctx, E_NODE_EXCEPTION, f"bad attachments: {exc}"), []
    try:
        size = len(encode(result))
    except TypeError as exc:
        log.error("job %s attempt %d: output is not JSON: %s", ctx.job_id, ctx.attempt, exc)
        return failure_result(ctx, E_NODE_EXCEPTION, f"the output is not JSON: {exc}"), []
    # An oversize frame would make the daemon close the connection on every resend.
    if size > DEFAULT_MAX_FRAME:
        log.error(
            "job %s attempt %d: output of %d bytes is too large", ctx.job_id, ctx.attempt, size
        )
        return failure_result(ctx, E_NODE_EXCEPTION,
                              f"the output is too large ({size} bytes)"), []
    return result, blobs


def over_limits(blobs: list[bytes], max_attachment: int, max_attachments: int) -> str:
    """Why the daemon would refuse attachments of these sizes ('' when they fit its limits)."""
    if not blobs:
        return ""
    largest = max((len(blob) for blob in blobs), default=0)
    if largest > max_attachment:
        return (f"an attachment of {largest} bytes exceeds the limit of {max_attachment} bytes "
                "per attachment (max_attachment)")
    total = sum(len(blob) for blob in blobs)
    if total > max_attachments:
        return (f"attachments of {total} bytes exceed the limit of {max_attachments} bytes per "
                "message (max_attachments)")
    return ""
