"""What the core delivers, as the wire message a connection sends: one pure function."""

from __future__ import annotations

import orjson

import schedd.protocol as p
from schedd.core import (
    AssignDelivery,
    CancelJob,
    Delivery,
    DoneDelivery,
    DrainNode,
    JobInfo,
    ProgressDelivery,
    SkippedDelivery,
    StageDoneDelivery,
)


def wire_message(delivery: Delivery) -> p.Message | None:
    """The message that tells the peer about ``delivery`` (None: a delivery for the instance
    alone, :class:`~schedd.core.Detach`). Payloads, progress data and outputs are embedded as
    the JSON text the core carries, not parsed again."""
    if isinstance(delivery, AssignDelivery):
        traceparent, tracestate = p.split_trace(delivery.trace)
        return p.Assign(job_id=delivery.job_id, attempt=delivery.attempt,
                        deadline=delivery.deadline_ms, session_id=delivery.session_id,
                        payload=orjson.Fragment(delivery.payload_json),
                        traceparent=traceparent, tracestate=tracestate)
    if isinstance(delivery, DoneDelivery):
        return done_message(delivery)
    if isinstance(delivery, StageDoneDelivery):
        return stage_done_message(delivery)
    if isinstance(delivery, ProgressDelivery):
        return p.Progress(job_id=delivery.job_id, attempt=delivery.attempt,
                          data=orjson.Fragment(delivery.data_json), stage=delivery.stage)
    if isinstance(delivery, CancelJob):
        return p.Cancel(job_id=delivery.job_id, attempt=delivery.attempt)
    if isinstance(delivery, SkippedDelivery):
        return p.Skipped(session_id=delivery.session_id, from_seq=delivery.from_seq,
                         to_seq=delivery.to_seq)
    if isinstance(delivery, DrainNode):
        if delivery.lifted:
            return p.Undrain(reason=delivery.reason or None)
        return p.Drain(reason=delivery.reason or None)
    return None


def stage_done_message(done: StageDoneDelivery) -> p.StageDone:
    """The ``stage_done`` a pipeline's client receives for one of its stages."""
    ok = done.state == "done"
    error = None
    if not ok:
        info = done.error or {}
        error = p.ErrorInfo(code=str(info.get("code") or "E_FAILED"),
                            message=str(info.get("message") or f"stage ended {done.state}"))
    return p.StageDone(
        job_id=done.job_id, stage=done.stage or "", branch=done.branch or None,
        index=done.index, state=done.state, ok=ok,  # type: ignore[arg-type]
        output=orjson.Fragment(done.output_json) if ok else None, error=error)


def done_message(done: DoneDelivery) -> p.Done:
    """The ``done`` a client receives for a finished job."""
    error = None
    if done.error:
        error = p.ErrorInfo(code=str(done.error.get("code") or "E_FAILED"),
                            message=str(done.error.get("message") or ""))
    elif not done.ok:
        error = p.ErrorInfo(code="E_FAILED", message=f"job ended {done.state}")
    traceparent, tracestate = p.split_trace(done.trace)
    return p.Done(
        job_id=done.job_id, state=done.state, ok=done.ok and done.state == "done",  # type: ignore[arg-type]
        output=orjson.Fragment(done.output_json) if done.output_json else None,
        error=error if done.state != "done" else None, node=done.node,
        attempts=done.attempts, timings={k: v for k, v in done.timings.items() if v},
        traceparent=traceparent, tracestate=tracestate, session_id=done.session_id,
        seq=done.seq,
    )


def job_message(info: JobInfo, ref: str | None) -> p.Job:
    """The ``job`` message that answers ``status`` and ``follow``."""
    traceparent, tracestate = p.split_trace(info.trace)
    return p.Job(job_id=info.job_id, state=info.state, attempt=info.attempt,  # type: ignore[arg-type]
                 node=info.node, traceparent=traceparent, tracestate=tracestate, ref=ref, info={
                     "pools": info.pools, "priority": info.priority,
                     "max_attempts": info.max_attempts, "reason": info.reason,
                     "timings": info.timings, "tried": info.tried,
                     "attempts": info.attempts, "payload_bytes": info.payload_bytes,
                     "output_bytes": info.output_bytes,
                     "attachment_bytes": info.attachment_bytes,
                 }, attachments=[p.Attachment(**spec) for spec in info.attachments])
