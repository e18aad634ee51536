"""What ``Client.submit`` and ``Client.submit_many`` share: a ``submit`` built from the
caller's arguments, an accepted job's handle, and a burst of submits in array frames.

Rules of this module:

- A burst (:func:`submit_many`) is checked whole before anything is sent: an argument the
  protocol forbids raises ``ValueError``, a job with attachments too (it goes with ``submit``).
- Its jobs go in array frames of the daemon's ``max_batch`` (one message per frame to a daemon
  that gave none); each job is answered on its own. A job refused has a finished handle whose
  ``result()`` raises the refusal; the others are accepted as ``submit`` would accept them.
- Refusals that ``submit`` retries are retried for the jobs they name, the same way: after a
  lost connection (every job again: each carries its ``job_id``, so a job already stored is
  answered as a duplicate), ``E_RATE_LIMITED`` (after the longest ``retry_after`` named, within
  the client's ``rate_limited_retries``), ``E_SHUTTING_DOWN`` (on the next daemon).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import anyio

from schedd.protocol import E_SHUTTING_DOWN, E_TOO_LARGE, Accepted, Submit
from schedd.sdk._conn import Link, LinkLost, RequestFailed
from schedd.sdk._dial import Dialer
from schedd.sdk._upkeep import _MAX_RATE_WAIT, E_RATE_LIMITED
from schedd.sdk.handle import JobHandle
from schedd.sdk.job import Attachments, attachment_items, over_limits

__all__ = ["acknowledge", "submit_many", "submit_message"]

log = logging.getLogger("schedd.sdk.client")


class Client(Protocol):
    """What this module uses of :class:`schedd.sdk.Client`."""

    max_attachment: int
    max_attachments: int
    _rate_limited_retries: int
    _reconnect: bool
    _dialer: Dialer

    def session(self, session_id: str) -> object: ...

    def _handle(self, job_id: str) -> tuple[JobHandle, bool]: ...

    def _forget(self, handle: JobHandle) -> None: ...

    async def _get_link(self) -> Link: ...

    def _check_retry(self) -> None: ...

    async def cancel(self, job_id: str) -> None: ...


def submit_message(
    client: Client, *, payload: Any = None, pools: Sequence[str] = (),
    requirements: Mapping[str, Any] | None = None, job_id: str | None = None,
    session_id: str | None = None, priority: int = 0, services: Sequence[str] = (),
    ack_timeout: float | None = None, run_timeout: float | None = None,
    queue_timeout: float | None = None, max_attempts: int | None = None, cost: int = 1,
    traceparent: str | None = None, tracestate: str | None = None, delay: float | None = None,
    not_before: float | None = None, backoff_base: float | None = None,
    backoff_max: float | None = None, result_ttl: float | None = None,
    keep_payload: bool = False, stages: Sequence[Mapping[str, Any]] | None = None,
    fail_fast: bool = False, seq: int | None = None, gap_timeout: float | None = None,
    attachments: Attachments | None = None,
) -> tuple[Submit, list[bytes]]:
    """The ``submit`` message of ``Client.submit``'s arguments (a ``job_id`` generated when
    none is given) and its attachments' bytes. Raises ``ValueError`` for an argument the
    protocol forbids, :class:`RequestFailed` ``E_TOO_LARGE`` for attachments over the limits."""
    specs, blobs = attachment_items(attachments)
    too_large = over_limits(blobs, client.max_attachment, client.max_attachments)
    if too_large:
        raise RequestFailed(E_TOO_LARGE, too_large, job_id=job_id)
    if seq is not None and session_id is not None:
        client.session(session_id)
    message = Submit(
        job_id=job_id if job_id is not None else os.urandom(16).hex(), pools=list(pools),
        requirements=dict(requirements or {}), services=list(services),
        stages=[dict(stage) for stage in stages] if stages is not None else None,
        payload=payload, session_id=session_id, priority=priority, ack_timeout=ack_timeout,
        run_timeout=run_timeout, queue_timeout=queue_timeout, max_attempts=max_attempts,
        traceparent=traceparent, tracestate=tracestate, delay=delay, not_before=not_before,
        backoff_base=backoff_base, backoff_max=backoff_max, result_ttl=result_ttl,
        keep_payload=keep_payload, fail_fast=fail_fast, seq=seq, gap_timeout=gap_timeout,
        cost=cost, attachments=specs,
    )
    return message, blobs


def acknowledge(handle: JobHandle, accepted: Accepted, message: Submit) -> JobHandle:
    """The handle of a job the daemon accepted (``message``'s ``accepted``)."""
    if not handle.finished:
        handle.state = accepted.state
    handle.duplicate = accepted.duplicate
    handle.traceparent, handle.tracestate = accepted.traceparent, accepted.tracestate
    handle._acknowledged = True
    if message.seq is not None:
        handle._session, handle._seq = message.session_id, message.seq
    return handle


async def submit_many(client: Client, jobs: Sequence[Mapping[str, Any]]) -> list[JobHandle]:
    """``Client.submit_many`` (see the module's rules)."""
    messages: list[Submit] = []
    for job in jobs:
        message, blobs = submit_message(client, **job)
        if blobs:
            raise ValueError(f"job {message.job_id} has attachments: submit it with submit()")
        messages.append(message)
    handles: list[JobHandle] = []
    created: list[bool] = []
    for message in messages:
        assert message.job_id is not None
        handle, new = client._handle(message.job_id)
        handles.append(handle)
        created.append(new)
    try:
        await _send(client, messages, handles, created)
    except BaseException:
        for handle, new in zip(handles, created, strict=True):
            if new and not handle._acknowledged:
                client._forget(handle)
        raise
    return handles


async def _send(client: Client, messages: list[Submit], handles: list[JobHandle],
                created: list[bool]) -> None:
    pending = list(range(len(messages)))
    rate_tries = moves = 0
    while pending:
        link = await client._get_link()
        try:
            replies = await link.request_many([messages[i] for i in pending], Accepted)
        except LinkLost:
            client._check_retry()
            continue
        again: list[int] = []
        wait = 0.0
        shutting_down = False
        for index, reply in zip(pending, replies, strict=True):
            if isinstance(reply, Accepted):
                acknowledge(handles[index], reply, messages[index])
                continue
            after = reply.retry_after
            if reply.code == E_RATE_LIMITED and after is not None and after <= _MAX_RATE_WAIT \
                    and rate_tries < client._rate_limited_retries:
                again.append(index)
                wait = max(wait, after)
            elif reply.code == E_SHUTTING_DOWN and client._reconnect \
                    and moves < 2 * len(client._dialer.urls):
                again.append(index)
                shutting_down = True
            else:
                _refuse(client, handles, created, index, reply)
        pending = again
        if shutting_down:
            moves += 1
            log.info("%s is shutting down; moving to another daemon", link.url)
            await link.aclose()  # the supervisor reconnects to the next URL
        elif again:
            rate_tries += 1
            await anyio.sleep(wait)


def _refuse(client: Client, handles: list[JobHandle], created: list[bool], index: int,
            failure: RequestFailed) -> None:
    """Job ``index`` was refused: its handle fails with the refusal. A handle another call
    waits on (the same job_id, not yet finished) is left to it; this job gets its own."""
    handle = handles[index]
    if not created[index]:
        handle = handles[index] = JobHandle(client, handle.job_id)
    elif handle._acknowledged:  # the same job_id earlier in this burst was accepted
        return
    handle._fail(failure)
    client._forget(handle)
