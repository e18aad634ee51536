"""A submit's script arguments: its lifecycle checked, one job's ARGV, a burst's calls.

Rules of this module:
  * Pure: no store, no I/O. :class:`~schedd.core.Core` calls the scripts with what it builds.
  * One job's arguments are the same for ``job_submit`` and for each job of
    ``job_submit_many`` (lua/include/submit.lua is the body both run), so a job behaves the same
    alone or in a burst.
  * A burst is split into calls of at most ``max_jobs`` jobs and about ``max_bytes`` of
    arguments (a single job over it still goes, alone): the bound of one script's work.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence

import orjson

from schedd.core.model import CoreSettings, DoneDelivery, JobSpec, Submitted, decode_delivery
from schedd.errors import BadArgument, BadDelay, BadTtl, error_from_reply
from schedd.protocol import MAX_SECONDS
from schedd.protocol.tracecontext import new_traceparent
from schedd.store.base import Arg

#: Most bytes of arguments one ``job_submit_many`` call carries (more jobs go in another call).
MAX_BURST_BYTES = 1 << 20


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def lifecycle(spec: JobSpec, s: CoreSettings) -> tuple[int, str, int]:
    """A submit's wait before placement (ms, 0: none), its backoff ('<base ms> <cap ms>') and
    its retention (ms), checked against the configured bounds."""
    if spec.delay is not None and spec.not_before is not None:
        raise BadDelay("give delay or not_before, not both")
    wait = spec.delay if spec.delay is not None else 0.0
    if spec.not_before is not None:
        wait = spec.not_before - time.time()  # read against this host's clock
    if not math.isfinite(wait) or wait > s.max_delay:
        raise BadDelay(f"the job would wait {wait:.0f} s; at most {s.max_delay:.0f} s (max_delay)")
    base = spec.backoff_base if spec.backoff_base is not None else s.backoff_base
    cap = spec.backoff_max if spec.backoff_max is not None else max(s.backoff_max, base)
    if not (0 < base <= cap <= MAX_SECONDS):
        raise BadArgument(f"backoff_base ({base} s) must be > 0 and at most backoff_max ({cap} s)")
    ttl = spec.result_ttl if spec.result_ttl is not None else s.retention
    if spec.result_ttl is not None and not 0 <= ttl <= s.max_result_ttl:
        raise BadTtl(f"result_ttl must be between 0 and {s.max_result_ttl:.0f} s (max_result_ttl)")
    return (round(wait * 1000) if wait > 0 else 0), f"{ms(base)} {ms(cap)}", ms(ttl)


def new_job_id() -> str:
    return f"job-{uuid.uuid4().hex[:16]}"


def submit_args(spec: JobSpec, s: CoreSettings, principal: str,
                ) -> tuple[str, str, list[Arg]]:
    """(job id, trace, ``job_submit``'s ARGV[2..]) of one job; raises the refusals made
    before any script (:class:`~schedd.errors.BadArgument`, ``BadDelay``, ``BadTtl``)."""
    if not spec.pools and not spec.stages_json:
        raise BadArgument("a job needs at least one candidate pool")
    if spec.seq is not None and not spec.session_id:
        raise BadArgument("a seq needs a session_id (the ordered session it belongs to)")
    wait, backoff, retain = lifecycle(spec, s)
    job_id = spec.job_id or new_job_id()
    if "//" in job_id:  # a pipeline's stages are jobs '<pipeline id>//<stage>'
        raise BadArgument(f"job id {job_id!r} may not contain '//'")
    trace = spec.trace or new_traceparent()  # every job has a trace context
    return job_id, trace, [
        principal,
        job_id,
        orjson.dumps(list(spec.pools)),
        spec.payload_json,
        spec.session_id or "",
        spec.priority,
        orjson.dumps(list(spec.services)),
        ms(spec.ack_timeout or s.ack_timeout),
        ms(spec.run_timeout or s.run_timeout),
        ms(spec.queue_timeout or s.queue_timeout),
        spec.max_attempts or s.max_attempts,
        "1" if s.queue else "0",
        s.max_queued,
        retain,
        ms(s.session_ttl),
        s.max_created_pools,
        trace,
        *s.limits_of(principal).script_args(),
        wait,
        backoff,
        "1" if spec.keep_payload or s.keep_payload else "0",
        f"{s.retain_count} {s.retain_bytes}",
        spec.stages_json,
        "1" if spec.fail_fast else "0",
        "" if spec.seq is None else spec.seq,
        ms(spec.gap_timeout or s.session_gap_timeout),
        repr(float(s.weights.get(principal, 1.0))),
        spec.cost,
        *attachment_args(spec.attachments),
    ]


def submitted(job_id: str, trace: str, result: Sequence[object]) -> Submitted:
    """One job's ``job_submit`` result as :class:`~schedd.core.model.Submitted`."""
    status, state, attempt, done, *rest = result
    done_msg = decode_delivery(done) if done else None  # type: ignore[arg-type]
    return Submitted(
        job_id=job_id,
        state=text(state),  # type: ignore[arg-type]
        attempt=int(attempt),  # type: ignore[call-overload]
        duplicate=text(status) == "duplicate",  # type: ignore[arg-type]
        done=done_msg if isinstance(done_msg, DoneDelivery) else None,
        follows=int(rest[0]) if rest else 0,  # type: ignore[call-overload]
        trace=text(rest[1]) if len(rest) > 1 else trace,  # type: ignore[arg-type]
    )


def burst_item(job_id: str, trace: str, result: Sequence[object]) -> Submitted | Exception:
    """One job's entry of a ``job_submit_many`` reply: its result, or its refusal as the
    exception ``job_submit`` would have raised."""
    if result and text(result[0]) == "error":  # type: ignore[arg-type]
        return error_from_reply(text(result[1]))  # type: ignore[arg-type]
    return submitted(job_id, trace, result)


def _size(args: Sequence[Arg]) -> int:
    return sum(len(a) if isinstance(a, bytes | str) else 8 for a in args)


def burst_calls(prepared: Sequence[tuple[int, list[Arg]]], max_jobs: int,
                max_bytes: int = MAX_BURST_BYTES) -> list[list[tuple[int, list[Arg]]]]:
    """The jobs ``(index, args)`` in calls of at most ``max_jobs`` jobs and ``max_bytes`` of
    arguments (a job larger than that alone), in order."""
    calls: list[list[tuple[int, list[Arg]]]] = []
    current: list[tuple[int, list[Arg]]] = []
    size = 0
    for item in prepared:
        n = _size(item[1])
        if current and (len(current) >= max_jobs or size + n > max_bytes):
            calls.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        calls.append(current)
    return calls


def attachment_args(attachments: Sequence[tuple[str, str, bytes]]) -> list[Arg]:
    """A script's attachment arguments: their list as JSON ('' for none), then each one's
    bytes."""
    if not attachments:
        return [""]
    specs = [{"name": name, "size": len(data), "media_type": media}
             for name, media, data in attachments]
    return [orjson.dumps(specs), *(data for _, _, data in attachments)]
