"""Values the core passes around: settings, what a node and a job declare, and deliveries.

Payloads, outputs and progress data stay serialised JSON text (``*_json`` fields) from the
submitting client to the node and back: the core never needs to look inside them, and the
transports can embed them without parsing them again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import orjson


@attrs.frozen(kw_only=True)
class Limits:
    """A principal's quotas (``[quotas]``); None: no limit."""

    max_in_flight: int | None = None
    max_queued: int | None = None
    max_payload_bytes: int | None = None
    submit_rate: float | None = None
    submit_burst: int | None = None

    def under(self, override: Limits) -> Limits:
        """These limits with every limit ``override`` sets replacing this one's."""
        changes = {k: v for k, v in attrs.asdict(override).items() if v is not None}
        return attrs.evolve(self, **changes)

    def script_args(self) -> list[str]:
        """job_submit's ARGV[19..23]: in flight, queued, payload bytes, rate, burst ('' none)."""
        rate = self.submit_rate
        burst = self.submit_burst or (max(1, math.ceil(rate)) if rate else None)
        return ["" if v is None else (repr(float(v)) if isinstance(v, float) else str(v))
                for v in (self.max_in_flight, self.max_queued, self.max_payload_bytes, rate,
                          burst if rate else None)]


@attrs.frozen(kw_only=True)
class CoreSettings:
    """Everything the core needs from the configuration (times in seconds)."""

    namespace: str = "schedd"
    instance: str = "schedd-1"
    heartbeat_interval: float = 1.0
    liveness_intervals: int = 3
    heartbeat_flush: float = 0.1
    liveness_refresh: int = 3
    ack_timeout: float = 5.0
    run_timeout: float = 300.0
    max_run: float = 86400.0
    queue_timeout: float = 60.0
    max_attempts: int = 3
    queue: bool = True
    max_queued: int = 100_000
    max_created_pools: int = 64
    #: fair share weight per principal (absent: 1); sched.toml [tenants] weights
    weights: Mapping[str, float] = attrs.field(factory=dict)
    #: seconds a principal stays active in a pool after a submit (its share is held; 0: off);
    #: sched.toml [tenants] hold
    fair_hold: float = 0.0
    retention: float = 3600.0
    session_ttl: float = 600.0
    max_result_ttl: float = 86400.0
    keep_payload: bool = False
    retain_count: int = 10000
    retain_bytes: int = 1 << 30
    max_delay: float = 7 * 86400.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    #: seconds a missing seq of an ordered session may hold later results before it is reported
    #: skipped (a submit may give its own)
    session_gap_timeout: float = 30.0
    node_retention: float = 600.0
    reaper_interval: float = 0.25
    reaper_batch: int = 200
    instance_ttl: float = 10.0
    quotas: Limits = Limits()
    principal_quotas: dict[str, Limits] = attrs.field(factory=dict)
    pool_rates: dict[str, float] = attrs.field(factory=dict)

    def limits_of(self, principal: str) -> Limits:
        """The quotas of ``principal``: its own where it has them, else the default's."""
        own = self.principal_quotas.get(principal)
        return self.quotas if own is None else self.quotas.under(own)

    @property
    def liveness_ttl(self) -> float:
        """How long a heartbeat keeps a node alive.

        A silent node must be found within ``liveness_intervals`` heartbeat intervals of its
        death, and finding it takes up to one flush window (the beat reaches Redis late) plus
        one reaper interval after expiry; both come off the budget, but never below one full
        interval more than the previous beat.
        """
        budget = self.heartbeat_interval * self.liveness_intervals
        ttl = budget - self.heartbeat_flush - self.reaper_interval
        return max(ttl, self.heartbeat_interval * max(self.liveness_intervals - 1, 1) + 0.05)

    @property
    def liveness_horizon(self) -> float:
        """How far the liveness a sent beat writes reaches: the ttl plus the beats not sent.

        An unchanged node's beat is sent every ``liveness_refresh`` beats, so between two writes
        a node keeps the same margin as if every beat were written; the instance holding the
        connection finds a silent node itself after ``liveness_ttl`` (``HeartbeatBatcher``),
        and this horizon only matters when that instance is gone.
        """
        return self.liveness_ttl + (self.liveness_refresh - 1) * self.heartbeat_interval

    @property
    def refresh_after(self) -> float:
        """Seconds after its last write an unchanged node's beat is sent again: half an
        interval before the ``liveness_refresh``-th beat is due, so beat jitter cannot skip it."""
        return (self.liveness_refresh - 0.5) * self.heartbeat_interval


@attrs.frozen(kw_only=True)
class JobSpec:
    """A job as submitted. ``None`` timeouts and attempts take the configured defaults."""

    pools: tuple[str, ...]
    payload_json: str = "null"
    job_id: str | None = None
    session_id: str | None = None
    priority: int = 0
    services: tuple[str, ...] = ()
    ack_timeout: float | None = None
    run_timeout: float | None = None
    queue_timeout: float | None = None
    max_attempts: int | None = None
    #: seconds from now, or unix seconds, before which the job is not placed (at most one)
    delay: float | None = None
    not_before: float | None = None
    #: a retryable failure's backoff: base seconds (doubled per attempt) and its cap
    backoff_base: float | None = None
    backoff_max: float | None = None
    #: seconds the finished job and its result are kept; None: the configured retention
    result_ttl: float | None = None
    #: keep the payload when the job ends done
    keep_payload: bool = False
    #: slots the job takes on its node
    cost: int = 1
    #: the job's W3C trace context as the store keeps it (schedd.protocol.join_trace): the
    #: traceparent, then a space and the tracestate when there is one; '' to have
    #: ``Core.submit`` make a new one
    trace: str = ""
    #: a pipeline: its stage records as JSON (schedd.session.stages.plan_stages); ``pools``,
    #: ``services``, the timeouts and ``max_attempts`` are then each stage's own
    stages_json: str = ""
    #: a pipeline: the first branch that fails cancels the others
    fail_fast: bool = False
    #: the job's place (>= 0) in the ordered session ``session_id`` of its principal: its done
    #: is delivered after every lower seq's; None: no ordered session
    seq: int | None = None
    #: the ordered session's gap timeout (None: the configured one)
    gap_timeout: float | None = None
    #: binary attachments: (name, media type, bytes) each, in the submit's order
    attachments: tuple[tuple[str, str, bytes], ...] = ()


@attrs.frozen(kw_only=True)
class Registration:
    node_id: str
    epoch: int
    pools: tuple[str, ...]
    used: int


@attrs.frozen(kw_only=True)
class Submitted:
    job_id: str
    state: str
    attempt: int
    duplicate: bool
    done: DoneDelivery | None = None
    #: the job's deliveries moved to this instance for the ``follows``-th time (0: a new job,
    #: or a finished one); orders a job's followers (schedd.routes)
    follows: int = 0
    #: the job's trace context as stored (JobSpec.trace): a duplicate's is the existing job's
    trace: str = ""


@attrs.frozen(kw_only=True)
class Followed:
    """A job whose deliveries now come to this instance (``Core.follow``)."""

    state: str
    attempt: int
    #: the job's done when it already finished
    done: DoneDelivery | None
    #: how many times the job's deliveries moved (0 for a finished job); orders its followers
    follows: int


# Deliveries: what an instance must send to a node or a client connection it holds. Scripts
# produce them as JSON arrays; ``decode_delivery`` is the one place that reads that format.


@attrs.frozen(kw_only=True)
class AssignDelivery:
    node_id: str
    job_id: str
    attempt: int
    payload_json: str
    session_id: str | None
    deadline_ms: int
    epoch: int
    #: the job's trace context as stored (JobSpec.trace)
    trace: str = ""
    #: JSON list of the submit's attachments ({name, size, media_type}); '' for none. Their
    #: bytes are read from the store (Queries.attachments) when the assign is sent.
    attachments_json: str = ""


@attrs.frozen(kw_only=True)
class CancelJob:
    node_id: str
    job_id: str
    attempt: int
    reason: str


@attrs.frozen(kw_only=True)
class DrainNode:
    node_id: str
    reason: str
    #: the drain is lifted (an operator's undrain): the node takes new jobs again
    lifted: bool = False


@attrs.frozen(kw_only=True)
class ProgressDelivery:
    job_id: str
    attempt: int
    data_json: str
    #: the principal owning the job (None: a delivery that does not say)
    principal: str | None = None
    #: the stage of a pipeline the progress is about (None: a job's own progress)
    stage: str | None = None


@attrs.frozen(kw_only=True)
class StageDoneDelivery(ProgressDelivery):
    """A stage of a pipeline ended; routed to the pipeline's client exactly as its progress
    (``job_id`` is the pipeline's)."""

    branch: str = ""
    index: int = 0
    state: str = ""
    output_json: str = "null"
    error: dict[str, Any] | None = None
    trace: str = ""


@attrs.frozen(kw_only=True)
class DoneDelivery:
    job_id: str
    state: str
    ok: bool
    output_json: str
    error: dict[str, Any] | None
    node: str | None
    attempts: int
    timings: dict[str, int]
    #: the principal owning the job (None: a delivery that does not say)
    principal: str | None = None
    #: the job's trace context as stored (JobSpec.trace)
    trace: str = ""
    #: the ordered session and the job's seq in it (None: not in an ordered session)
    session_id: str | None = None
    seq: int | None = None
    #: JSON list of the result's attachments ({name, size, media_type}); '' for none
    attachments_json: str = ""


@attrs.frozen(kw_only=True)
class SkippedDelivery:
    """An ordered session's seqs ``from_seq``..``to_seq`` got no result within its gap
    timeout: the session's later results follow."""

    principal: str
    session_id: str
    from_seq: int
    to_seq: int


@attrs.frozen(kw_only=True)
class SessionFollowed:
    """An ordered session whose results now come to this instance (``Core.follow_session``)."""

    #: the lowest seq neither delivered nor reported skipped
    next_seq: int
    #: results still waiting for a lower seq
    held: int


@attrs.frozen(kw_only=True)
class Detach:
    """The job's deliveries moved to another instance (a follow or a duplicate submit there):
    this instance's connection of ``principal`` that follows the job no longer does, unless
    its own follow is the newer (``follows`` orders the moves of one job)."""

    job_id: str
    principal: str
    follows: int


Delivery = (AssignDelivery | CancelJob | DrainNode | ProgressDelivery | DoneDelivery | Detach
            | SkippedDelivery)


# Events: what a script changed, reported to the instance that ran it (for plugins' event hooks).


@attrs.frozen(kw_only=True)
class JobStateChanged:
    job_id: str
    state: str
    attempt: int
    node: str | None


@attrs.frozen(kw_only=True)
class NodeWentOffline:
    node_id: str
    reason: str


Event = JobStateChanged | NodeWentOffline


def decode_event(raw: bytes | str) -> Event:
    f = orjson.loads(raw)
    if f[0] == "job":
        return JobStateChanged(job_id=f[1], state=f[2], attempt=int(f[3]), node=f[4] or None)
    if f[0] == "node_offline":
        return NodeWentOffline(node_id=f[1], reason=f[2])
    raise ValueError(f"unknown event kind {f[0]!r}")


def _done(f: list[Any]) -> DoneDelivery:
    error = orjson.loads(f[5]) if f[5] else None
    return DoneDelivery(
        job_id=f[1],
        state=f[2],
        ok=bool(f[3]),
        output_json=f[4],
        error=error if isinstance(error, dict) else None,
        node=f[6] or None,
        attempts=int(f[7]),
        timings={"submitted": f[8], "assigned": f[9], "accepted": f[10], "finished": f[11]},
        principal=(f[12] or None) if len(f) > 12 else None,
        trace=f[13] if len(f) > 13 else "",
        attachments_json=f[14] if len(f) > 14 else "",
        session_id=f[15] if len(f) > 16 else None,
        seq=int(f[16]) if len(f) > 16 else None,
    )


def decode_delivery(raw: bytes | str) -> Delivery:
    f = orjson.loads(raw)
    kind = f[0]
    if kind == "assign":
        return AssignDelivery(
            node_id=f[1], job_id=f[2], attempt=int(f[3]), payload_json=f[4],
            session_id=f[5] or None, deadline_ms=int(f[6]), epoch=int(f[7]),
            trace=f[8] if len(f) > 8 else "",
            attachments_json=f[9] if len(f) > 9 else "",
        )
    if kind == "cancel":
        return CancelJob(node_id=f[1], job_id=f[2], attempt=int(f[3]), reason=f[4])
    if kind == "drain":
        return DrainNode(node_id=f[1], reason=f[2], lifted=len(f) > 3 and bool(f[3]))
    if kind == "progress":
        return ProgressDelivery(job_id=f[1], attempt=int(f[2]), data_json=f[3],
                        principal=(f[4] or None) if len(f) > 4 else None,
                        stage=f[5] if len(f) > 5 else None)
    if kind == "stage_done":
        error = orjson.loads(f[7])
        return StageDoneDelivery(
            job_id=f[1], stage=f[2], branch=f[3], index=int(f[4]), state=f[5], attempt=0,
            data_json="null", output_json=f[6], error=error if isinstance(error, dict) else None,
            principal=f[8] or None, trace=f[9])
    if kind == "detach":
        return Detach(job_id=f[1], principal=f[2], follows=int(f[3]))
    if kind == "done":
        return _done(f)
    if kind == "skipped":
        return SkippedDelivery(principal=f[1], session_id=f[2], from_seq=int(f[3]),
                               to_seq=int(f[4]))
    raise ValueError(f"unknown delivery kind {kind!r}")
