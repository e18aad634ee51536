"""Every message of the schedd wire protocol, one frozen attrs class each.

Rules of this module:

- A message class is ``@attrs.frozen(kw_only=True)`` and names its JSON ``type`` in the class
  attribute ``TYPE``; ``SENT_BY`` says which side may send it (``"node"``, ``"client"``,
  ``"daemon"``). :data:`MESSAGE_TYPES` maps every ``TYPE`` to its class and :data:`Message` is the
  union of them all.
- Every message has an optional ``ref``: a correlation id chosen by the peer that sent a request.
  The daemon copies it into the direct reply (``welcome``, ``registered``, ``accepted``, ``job``,
  ``pong``) and into any ``error`` about that request.
- Validation lives in attrs validators (the limits, checks and validators:
  :mod:`schedd.protocol.fields`), so a message that breaks a rule cannot be constructed,
  whether it came off the wire or from Python code. A broken rule raises :class:`InvalidField`
  (a ``ValueError``) naming the field path, e.g. ``pools[3]`` or ``labels['gpu']``.
- Values are JSON values: ``str``, ``int`` (never ``bool``), ``float`` (ints are accepted where a
  float is expected; never NaN or infinity), ``bool``, ``None``, ``list`` and ``dict`` with string
  keys. Fields typed ``Any`` (payloads, outputs, progress data) and the values of object fields
  (capabilities, requirements) are opaque JSON: only their nesting is checked, in what a peer
  sends, so that whatever decodes can be encoded again (:data:`MAX_DEPTH`). A value JSON cannot
  carry fails when the message is encoded.
- Ids (``job_id``, ``node_id``, ``session_id``, pool and service names, label keys) are non-empty
  strings of at most :data:`MAX_ID_LEN` characters with no control characters. Integers are at
  most 2**53 - 1 so that every JSON implementation reads them exactly. Durations in seconds are
  finite, greater than 0 and at most :data:`MAX_SECONDS`, so every one converts to milliseconds
  the store can hold. Lists and mappings are bounded (see the ``MAX_*`` constants); the frame
  limit bounds everything else.
- Attempts count from 1; ``0`` means "never assigned" and appears only in ``job`` and ``done``.
- This module imports no I/O library.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

import attrs

from schedd.protocol.admin import ADMIN_ACTIONS, MAX_ADMIN_JOBS, Acted, Admin, Undrain
from schedd.protocol.fields import (
    MAX_ATTACHMENTS,
    MAX_CAPACITY,
    MAX_DEPTH,
    MAX_ID_LEN,
    MAX_INT,
    MAX_LIST,
    MAX_MAPPING,
    MAX_PRIORITY,
    MAX_RUNNING,
    MAX_SECONDS,
    MAX_TEXT_LEN,
    InvalidField,
    _any_json,
    _bool,
    _float,
    _int,
    _json_object,
    _labels,
    _name,
    _names,
    _one_of,
    _opt_float,
    _opt_int,
    _opt_json_object,
    _opt_name,
    _opt_text,
    _opt_traceparent,
    _opt_tracestate,
    _ref,
    _text,
    _timings,
    _view_object,
)
from schedd.protocol.outcome import (
    TERMINAL_STATES,
    JobState,
    Sender,
    TerminalState,
    _done_error,
    _done_ok,
)
from schedd.protocol.parts import (
    Attachment,
    ErrorInfo,
    RunningJob,
    _attachments,
    _opt_error_info,
    _running_jobs,
)
from schedd.protocol.pipelines import StageDone, _opt_stages
from schedd.protocol.query import MAX_JOB_PAGE, QUERY_SUBJECTS, Answer, Query
from schedd.protocol.sessions import FollowSession, Session, Skipped
from schedd.protocol.states import JOB_STATES

__all__ = [
    "ADMIN_ACTIONS",
    "CLIENT_SENDS",
    "DAEMON_SENDS",
    "JOB_STATES",
    "MAX_ADMIN_JOBS",
    "MAX_ATTACHMENTS",
    "MAX_CAPACITY",
    "MAX_DEPTH",
    "MAX_ID_LEN",
    "MAX_INT",
    "MAX_JOB_PAGE",
    "MAX_LIST",
    "MAX_MAPPING",
    "MAX_PRIORITY",
    "MAX_RUNNING",
    "MAX_SECONDS",
    "MAX_TEXT_LEN",
    "MESSAGE_TYPES",
    "NODE_SENDS",
    "PROTOCOL_VERSION",
    "QUERY_SUBJECTS",
    "TERMINAL_STATES",
    "Accept",
    "Accepted",
    "Acted",
    "Admin",
    "Answer",
    "Assign",
    "Attachment",
    "Cancel",
    "Done",
    "Drain",
    "Error",
    "ErrorInfo",
    "Follow",
    "Heartbeat",
    "Hello",
    "InvalidField",
    "Job",
    "JobState",
    "Message",
    "Ping",
    "Pong",
    "Progress",
    "Query",
    "Register",
    "Registered",
    "Reject",
    "Result",
    "Role",
    "RunningJob",
    "Sender",
    "StageDone",
    "Status",
    "Submit",
    "TerminalState",
    "Unavailable",
    "Undrain",
    "Welcome",
]

PROTOCOL_VERSION: Final = 1
"""The protocol version this package speaks; a peer sends it in ``hello``."""

Role: TypeAlias = Literal["node", "client"]
_ROLES: Final[frozenset[str]] = frozenset({"node", "client"})

# --------------------------------------------------------------------------------------------
# Messages. Field order here is the order on the wire and in docs/protocol.md.
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Hello:
    """First message of every connection: who the peer is and which protocol it speaks."""

    TYPE: ClassVar[str] = "hello"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node", "client"})

    role: Role = attrs.field(validator=_one_of(_ROLES))
    version: int = attrs.field(validator=_int(0))
    token: str | None = attrs.field(default=None, validator=_opt_text)
    name: str | None = attrs.field(default=None, validator=_opt_name)
    #: the peer reads array frames (several messages in one frame); left out when false
    batch: bool = attrs.field(default=False, validator=_bool)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Welcome:
    """The daemon accepted ``hello``."""

    TYPE: ClassVar[str] = "welcome"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    instance: str = attrs.field(validator=_name)
    version: int = attrs.field(validator=_int(0))
    heartbeat_interval: float = attrs.field(validator=_float(positive=True))
    principal: str = attrs.field(validator=_name)
    #: most messages one array frame may hold (``[limits] max_batch``); sent only to a peer
    #: whose ``hello`` said ``batch`` (0, left out, otherwise)
    max_batch: int = attrs.field(default=0, validator=_int(0))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Error:
    """The daemon refused a message or the connection; ``code`` is a key of ``ERROR_CODES``."""

    TYPE: ClassVar[str] = "error"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    code: str = attrs.field(validator=_name)
    message: str = attrs.field(default="", validator=_text)
    job_id: str | None = attrs.field(default=None, validator=_opt_name)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Register:
    """A node declares what it can do (after ``welcome``, and again after every reconnect)."""

    TYPE: ClassVar[str] = "register"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node"})

    capacity: int = attrs.field(validator=_int(1, MAX_CAPACITY))
    node_id: str | None = attrs.field(default=None, validator=_opt_name)
    capabilities: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    labels: dict[str, str] = attrs.field(factory=dict, validator=_labels)
    pools: list[str] = attrs.field(factory=list, validator=_names(MAX_LIST))
    running: list[RunningJob] = attrs.field(factory=list, validator=_running_jobs)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Registered:
    """The daemon registered the node: its id, its new epoch and the pools it joined."""

    TYPE: ClassVar[str] = "registered"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    node_id: str = attrs.field(validator=_name)
    epoch: int = attrs.field(validator=_int(0))
    pools: list[str] = attrs.field(factory=list, validator=_names(MAX_LIST))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Heartbeat:
    """A registered node is alive; sent every ``heartbeat_interval`` seconds."""

    TYPE: ClassVar[str] = "heartbeat"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node"})

    inflight: int = attrs.field(validator=_int(0))
    running: list[str] = attrs.field(factory=list, validator=_names(MAX_RUNNING))
    load: float = attrs.field(default=0.0, validator=_float(positive=False))
    capabilities: dict[str, Any] | None = attrs.field(default=None, validator=_opt_json_object)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Assign:
    """The daemon offers attempt ``attempt`` of a job to a node, to accept before ``deadline``."""

    TYPE: ClassVar[str] = "assign"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))
    deadline: int = attrs.field(validator=_int(0))
    payload: Any = None
    session_id: str | None = attrs.field(default=None, validator=_opt_name)
    traceparent: str | None = attrs.field(default=None, validator=_opt_traceparent)
    tracestate: str | None = attrs.field(default=None, validator=_opt_tracestate)
    attachments: list[Attachment] = attrs.field(factory=list, validator=_attachments)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Accept:
    """The node starts running the attempt."""

    TYPE: ClassVar[str] = "accept"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node"})

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Reject:
    """The node will not run the attempt; the job goes back to the queue."""

    TYPE: ClassVar[str] = "reject"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node"})

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))
    reason: str = attrs.field(default="", validator=_text)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Progress:
    """Intermediate output of a running attempt: node to daemon, then daemon to the client."""

    TYPE: ClassVar[str] = "progress"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node", "daemon"})

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))
    data: Any = attrs.field(default=None, validator=_any_json)
    #: the daemon's, for a pipeline: the stage the progress is about
    stage: str | None = attrs.field(default=None, validator=_opt_name)
    ref: str | None = _ref()


def _result_error(instance: Result, attribute: attrs.Attribute[Any], value: object) -> None:
    _opt_error_info(instance, attribute, value)
    if instance.ok and value is not None:
        raise InvalidField(attribute.name, "must be null when ok is true")
    if not instance.ok and value is None:
        raise InvalidField(attribute.name, "is required when ok is false")


@attrs.frozen(kw_only=True)
class Result:
    """The node finished the attempt: ``ok`` with ``output``, or not ``ok`` with ``error``."""

    TYPE: ClassVar[str] = "result"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node"})

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))
    ok: bool = attrs.field(validator=_bool)
    output: Any = attrs.field(default=None, validator=_any_json)
    error: ErrorInfo | None = attrs.field(default=None, validator=_result_error)
    retryable: bool = attrs.field(default=False, validator=_bool)
    attachments: list[Attachment] = attrs.field(factory=list, validator=_attachments)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Cancel:
    """Stop a job: client to daemon (no attempt), then daemon to the node running ``attempt``."""

    TYPE: ClassVar[str] = "cancel"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client", "daemon"})

    job_id: str = attrs.field(validator=_name)
    attempt: int | None = attrs.field(default=None, validator=_opt_int(1))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Drain:
    """Take no new work: daemon to node (an order), or node to daemon (a request)."""

    TYPE: ClassVar[str] = "drain"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node", "daemon"})

    reason: str | None = attrs.field(default=None, validator=_opt_text)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Unavailable:
    """The node cannot reach ``service`` for ``ttl`` seconds; keep jobs needing it elsewhere."""

    TYPE: ClassVar[str] = "unavailable"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node"})

    service: str = attrs.field(validator=_name)
    ttl: float = attrs.field(validator=_float(positive=True, high=MAX_SECONDS))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Submit:
    """A client asks for a job to be run; a known ``job_id`` returns the existing job."""

    TYPE: ClassVar[str] = "submit"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    job_id: str | None = attrs.field(default=None, validator=_opt_name)
    pools: list[str] = attrs.field(factory=list, validator=_names(MAX_LIST))
    requirements: dict[str, Any] = attrs.field(factory=dict, validator=_json_object)
    payload: Any = attrs.field(default=None, validator=_any_json)
    session_id: str | None = attrs.field(default=None, validator=_opt_name)
    priority: int = attrs.field(default=0, validator=_int(-MAX_PRIORITY, MAX_PRIORITY))
    services: list[str] = attrs.field(factory=list, validator=_names(MAX_LIST))
    ack_timeout: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    run_timeout: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    queue_timeout: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    max_attempts: int | None = attrs.field(default=None, validator=_opt_int(1))
    cost: int = attrs.field(default=1, validator=_int(1, MAX_CAPACITY))
    traceparent: str | None = attrs.field(default=None, validator=_opt_traceparent)
    tracestate: str | None = attrs.field(default=None, validator=_opt_tracestate)
    delay: float | None = attrs.field(default=None, validator=_opt_float(positive=False))
    not_before: float | None = attrs.field(default=None, validator=_opt_float(positive=True))
    backoff_base: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    backoff_max: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    result_ttl: float | None = attrs.field(default=None, validator=_opt_float(positive=False))
    keep_payload: bool = attrs.field(default=False, validator=_bool)
    #: a pipeline: its stages in order (checked by the daemon: schedd.session.stages)
    stages: list[Any] | None = attrs.field(default=None, validator=_opt_stages)
    #: a pipeline: the first branch that fails cancels the others
    fail_fast: bool = attrs.field(default=False, validator=_bool)
    seq: int | None = attrs.field(default=None, validator=_opt_int(0))
    gap_timeout: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    attachments: list[Attachment] = attrs.field(factory=list, validator=_attachments)
    ref: str | None = _ref()

    def __attrs_post_init__(self) -> None:
        if self.seq is not None and self.session_id is None:
            raise InvalidField("seq", "needs a session_id: the ordered session it belongs to")
        if self.gap_timeout is not None and self.seq is None:
            raise InvalidField("gap_timeout", "applies to a job with a seq only")


@attrs.frozen(kw_only=True)
class Accepted:
    """The daemon holds the job (new, or the existing one when ``duplicate``)."""

    TYPE: ClassVar[str] = "accepted"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    job_id: str = attrs.field(validator=_name)
    state: JobState = attrs.field(validator=_one_of(JOB_STATES))
    duplicate: bool = attrs.field(default=False, validator=_bool)
    traceparent: str | None = attrs.field(default=None, validator=_opt_traceparent)
    tracestate: str | None = attrs.field(default=None, validator=_opt_tracestate)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Done:
    """The job reached its terminal state; sent exactly once per job to its client."""

    TYPE: ClassVar[str] = "done"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    job_id: str = attrs.field(validator=_name)
    state: TerminalState = attrs.field(validator=_one_of(TERMINAL_STATES))
    ok: bool = attrs.field(validator=_done_ok)
    output: Any = None
    error: ErrorInfo | None = attrs.field(default=None, validator=_done_error)
    node: str | None = attrs.field(default=None, validator=_opt_name)
    attempts: int = attrs.field(default=0, validator=_int(0))
    timings: dict[str, int] = attrs.field(factory=dict, validator=_timings)
    traceparent: str | None = attrs.field(default=None, validator=_opt_traceparent)
    tracestate: str | None = attrs.field(default=None, validator=_opt_tracestate)
    session_id: str | None = attrs.field(default=None, validator=_opt_name)
    seq: int | None = attrs.field(default=None, validator=_opt_int(0))
    attachments: list[Attachment] = attrs.field(factory=list, validator=_attachments)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Status:
    """A client asks where a job is; answered with ``job``."""

    TYPE: ClassVar[str] = "status"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    job_id: str = attrs.field(validator=_name)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Job:
    """A snapshot of one job, in reply to ``status``."""

    TYPE: ClassVar[str] = "job"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    job_id: str = attrs.field(validator=_name)
    state: JobState = attrs.field(validator=_one_of(JOB_STATES))
    attempt: int = attrs.field(default=0, validator=_int(0))
    node: str | None = attrs.field(default=None, validator=_opt_name)
    info: dict[str, Any] = attrs.field(factory=dict, validator=_view_object)
    traceparent: str | None = attrs.field(default=None, validator=_opt_traceparent)
    tracestate: str | None = attrs.field(default=None, validator=_opt_tracestate)
    attachments: list[Attachment] = attrs.field(factory=list, validator=_attachments)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Follow:
    """A client re-attaches this connection to a job it submitted earlier."""

    TYPE: ClassVar[str] = "follow"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    job_id: str = attrs.field(validator=_name)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Ping:
    """Keepalive; the other side answers ``pong`` with the same ``ref``."""

    TYPE: ClassVar[str] = "ping"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node", "client", "daemon"})

    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Pong:
    """Answer to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"node", "client", "daemon"})

    ref: str | None = _ref()


Message: TypeAlias = (
    Hello
    | Welcome
    | Error
    | Register
    | Registered
    | Heartbeat
    | Assign
    | Accept
    | Reject
    | Progress
    | Result
    | Cancel
    | Drain
    | Unavailable
    | Submit
    | Accepted
    | StageDone
    | Done
    | Skipped
    | Status
    | Job
    | Follow
    | FollowSession
    | Session
    | Query
    | Answer
    | Admin
    | Acted
    | Undrain
    | Ping
    | Pong
)

MESSAGE_TYPES: Final[dict[str, type[Message]]] = {cls.TYPE: cls for cls in get_args(Message)}
"""Every message class by its JSON ``type``, in documentation order."""

NODE_SENDS: Final[frozenset[str]] = frozenset(
    tag for tag, cls in MESSAGE_TYPES.items() if "node" in cls.SENT_BY
)
CLIENT_SENDS: Final[frozenset[str]] = frozenset(
    tag for tag, cls in MESSAGE_TYPES.items() if "client" in cls.SENT_BY
)
DAEMON_SENDS: Final[frozenset[str]] = frozenset(
    tag for tag, cls in MESSAGE_TYPES.items() if "daemon" in cls.SENT_BY
)
