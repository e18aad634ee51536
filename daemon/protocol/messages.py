"""Every message of the schedd wire protocol, one frozen attrs class each.

Rules of this module:

- A message class is ``@attrs.frozen(kw_only=True)`` and names its JSON ``type`` in the class
  attribute ``TYPE``; ``SENT_BY`` says which side may send it (``"node"``, ``"client"``,
  ``"daemon"``). :data:`MESSAGE_TYPES` maps every ``TYPE`` to its class and :data:`Message` is the
  union of them all.
- Every message has an optional ``ref``: a correlation id chosen by the peer that sent a request.
  The daemon copies it into the direct reply (``welcome``, ``registered``, ``accepted``, ``job``,
  ``pong``) and into any ``error`` about that request.
- Validation lives in attrs validators, so a message that breaks a rule cannot be constructed,
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

import math
import re
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Final, Literal, TypeAlias, get_args

import attrs

__all__ = [
    "CLIENT_SENDS",
    "DAEMON_SENDS",
    "JOB_STATES",
    "MAX_CAPACITY",
    "MAX_DEPTH",
    "MAX_ID_LEN",
    "MAX_INT",
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
    "Answer",
    "Assign",
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
    "Status",
    "Submit",
    "TerminalState",
    "Unavailable",
    "Welcome",
]

PROTOCOL_VERSION: Final = 1
"""The protocol version this package speaks; a peer sends it in ``hello``."""

MAX_ID_LEN: Final = 200
"""Longest id, pool name, service name or label key, in characters."""
MAX_TEXT_LEN: Final = 4096
"""Longest free-text field (reasons, error messages, tokens), in characters."""
MAX_LIST: Final = 64
"""Most entries in a list of names (``pools``, ``services``)."""
MAX_MAPPING: Final = 256
"""Most keys in a mapping (``capabilities``, ``labels``, ``requirements``, ``info``...)."""
MAX_RUNNING: Final = 4096
"""Most job ids a node may report as running (``register.running``, ``heartbeat.running``)."""
MAX_CAPACITY: Final = 4096
"""Largest ``register.capacity``."""
MAX_INT: Final = 2**53 - 1
"""Largest integer in any field: the largest a JSON double represents exactly."""
MAX_PRIORITY: Final = 1000
"""Bound of ``submit.priority`` (either sign), as the store's queues use; higher runs first."""
MAX_SECONDS: Final = 30 * 24 * 3600
"""Longest duration a peer may give, in seconds (30 days): ``submit``'s timeouts and
``unavailable.ttl``."""
MAX_DEPTH: Final = 64
"""Deepest nesting of arrays and objects in an opaque JSON field a peer sends (``payload``,
``output``, ``data``, ``capabilities``, ``requirements``), the field's own array or object
counting as the first level. The daemon re-encodes these values (orjson refuses 255 levels) and
nests them in its own messages, so the limit keeps a wide margin below what any encoder takes."""

Role: TypeAlias = Literal["node", "client"]
Sender: TypeAlias = Literal["node", "client", "daemon"]
JobState: TypeAlias = Literal[
    "queued", "assigned", "running", "done", "failed", "canceled", "timed_out"
]
TerminalState: TypeAlias = Literal["done", "failed", "canceled", "timed_out"]

#: Every job state, in the order of the job's life (the one definition: the core imports it).
JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
TERMINAL_STATES: Final[frozenset[str]] = frozenset(get_args(TerminalState))
_ROLES: Final[frozenset[str]] = frozenset({"node", "client"})

# C0, DEL and C1 controls break logs, terminals and key readability; a lone surrogate cannot be
# written as UTF-8 at all.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class InvalidField(ValueError):
    """A message field breaks a protocol rule; ``path`` names it (``pools[3]``, ``error.code``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Checks. Each takes the value and its path and raises InvalidField; the validator factories
# below bind them to attributes. They are plain functions because this is the decode hot path.
# --------------------------------------------------------------------------------------------

Validator: TypeAlias = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(key: object) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_name(value: object, path: str) -> None:
    if not isinstance(value, str):
        raise InvalidField(path, f"must be a string, got {_json_type(value)}")
    if not value:
        raise InvalidField(path, "must not be empty")
    if len(value) > MAX_ID_LEN:
        raise InvalidField(path, f"must be at most {MAX_ID_LEN} characters")
    if not value.isprintable() and _CONTROL.search(value) is not None:
        raise InvalidField(path, "must not contain control characters or lone surrogates")


def _check_text(value: object, path: str) -> None:
    if not isinstance(value, str):
        raise InvalidField(path, f"must be a string, got {_json_type(value)}")
    if len(value) > MAX_TEXT_LEN:
        raise InvalidField(path, f"must be at most {MAX_TEXT_LEN} characters")


def _check_int(value: object, path: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidField(path, f"must be an integer, got {_json_type(value)}")
    if not low <= value <= high:
        raise InvalidField(path, f"must be between {low} and {high}")


def _check_float(value: object, path: str, positive: bool, high: int | None = None) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidField(path, f"must be a number, got {_json_type(value)}")
    if not math.isfinite(value):
        raise InvalidField(path, "must be finite")
    if positive and value <= 0:
        raise InvalidField(path, "must be greater than 0")
    if value < 0:
        raise InvalidField(path, "must not be negative")
    if high is not None and value > high:
        raise InvalidField(path, f"must be at most {high}")


def _too_deep(value: object, room: int) -> bool:
    """True when ``value`` nests more than ``room`` arrays and objects. Recursion stops at
    ``room`` levels, so a value decoded from any frame cannot exhaust the stack."""
    if value.__class__ is dict:
        items: Any = value.values()
    elif value.__class__ is list:
        items = value
    else:
        return False
    if room == 0:
        return True
    for item in items:
        if (item.__class__ is dict or item.__class__ is list) and _too_deep(item, room - 1):
            return True
    return False


def _check_depth(value: object, path: str) -> None:
    if _too_deep(value, MAX_DEPTH):
        raise InvalidField(
            path, f"must not nest arrays and objects more than {MAX_DEPTH} levels deep")


def _name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_name(value, attribute.name)


def _opt_name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_name(value, attribute.name)


def _text(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_text(value, attribute.name)


def _opt_text(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_text(value, attribute.name)


def _bool(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidField(attribute.name, f"must be a boolean, got {_json_type(value)}")


def _int(low: int, high: int = MAX_INT) -> Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        _check_int(value, attribute.name, low, high)

    return check


def _opt_int(low: int, high: int = MAX_INT) -> Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            _check_int(value, attribute.name, low, high)

    return check


def _float(*, positive: bool, high: int | None = None) -> Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        _check_float(value, attribute.name, positive, high)

    return check


def _opt_float(*, positive: bool, high: int | None = None) -> Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            _check_float(value, attribute.name, positive, high)

    return check


def _one_of(allowed: Collection[str]) -> Validator:
    choices = ", ".join(sorted(allowed))

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise InvalidField(attribute.name, f"must be one of: {choices}")

    return check


def _names(max_items: int) -> Validator:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        path = attribute.name
        if not isinstance(value, list):
            raise InvalidField(path, f"must be an array, got {_json_type(value)}")
        if len(value) > max_items:
            raise InvalidField(path, f"must have at most {max_items} entries")
        for index, item in enumerate(value):
            _check_name(item, f"{path}[{index}]")

    return check


def _check_mapping(value: object, path: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise InvalidField(path, f"must be an object, got {_json_type(value)}")
    if len(value) > MAX_MAPPING:
        raise InvalidField(path, f"must have at most {MAX_MAPPING} keys")
    for key in value:
        _check_name(key, f"{path} key {_short(key)}")
    return value


def _json_object(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """An object a peer sends: its values are opaque JSON of bounded nesting."""
    _check_depth(_check_mapping(value, attribute.name), attribute.name)


def _opt_json_object(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _json_object(instance, attribute, value)


def _view_object(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """An object the daemon builds (``job.info``, ``answer.data``): it may nest peers' values
    (a node's capabilities in ``answer``) one or two levels below their own limit."""
    _check_mapping(value, attribute.name)


def _any_json(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """An opaque value a peer sends (``payload``, ``output``, ``data``): bounded nesting. The
    daemon's own (an ``orjson.Fragment``, already encoded) passes as it is."""
    _check_depth(value, attribute.name)


def _labels(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    for key, item in _check_mapping(value, path).items():
        if not isinstance(item, str):
            raise InvalidField(
                f"{path}[{_short(key)}]", f"must be a string, got {_json_type(item)}"
            )
        if len(item) > MAX_ID_LEN:
            raise InvalidField(f"{path}[{_short(key)}]", f"must be at most {MAX_ID_LEN} characters")


def _timings(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    for key, item in _check_mapping(value, path).items():
        _check_int(item, f"{path}[{_short(key)}]", 0, MAX_INT)


def _running_jobs(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    if not isinstance(value, list):
        raise InvalidField(path, f"must be an array, got {_json_type(value)}")
    if len(value) > MAX_RUNNING:
        raise InvalidField(path, f"must have at most {MAX_RUNNING} entries")
    for index, item in enumerate(value):
        if not isinstance(item, RunningJob):
            raise InvalidField(f"{path}[{index}]", "must be a RunningJob")


def _opt_error_info(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, ErrorInfo):
        raise InvalidField(attribute.name, "must be an ErrorInfo or null")


def _ref() -> Any:
    # A fresh field per class: attrs orders fields by creation, so ``ref`` stays last.
    return attrs.field(default=None, validator=_opt_name)


# --------------------------------------------------------------------------------------------
# Parts of messages.
# --------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """Why a job failed: a short machine-readable ``code`` and a human ``message``."""

    code: str = attrs.field(validator=_name)
    message: str = attrs.field(default="", validator=_text)


@attrs.frozen(kw_only=True)
class RunningJob:
    """One job a (re)registering node is still running."""

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))


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
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Accepted:
    """The daemon holds the job (new, or the existing one when ``duplicate``)."""

    TYPE: ClassVar[str] = "accepted"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    job_id: str = attrs.field(validator=_name)
    state: JobState = attrs.field(validator=_one_of(JOB_STATES))
    duplicate: bool = attrs.field(default=False, validator=_bool)
    ref: str | None = _ref()


def _done_ok(instance: Done, attribute: attrs.Attribute[Any], value: object) -> None:
    _bool(instance, attribute, value)
    if value is not (instance.state == "done"):
        raise InvalidField(attribute.name, "must be true exactly when state is 'done'")


def _done_error(instance: Done, attribute: attrs.Attribute[Any], value: object) -> None:
    _opt_error_info(instance, attribute, value)
    if instance.ok and value is not None:
        raise InvalidField(attribute.name, "must be null when ok is true")


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
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Follow:
    """A client re-attaches this connection to a job it submitted earlier."""

    TYPE: ClassVar[str] = "follow"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    job_id: str = attrs.field(validator=_name)
    ref: str | None = _ref()


QUERY_SUBJECTS: Final[frozenset[str]] = frozenset({"nodes", "pools", "stats"})


@attrs.frozen(kw_only=True)
class Query:
    """A client asks for a global view (for the CLI); answered with ``answer``."""

    TYPE: ClassVar[str] = "query"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    what: str = attrs.field(validator=_one_of(QUERY_SUBJECTS))
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Answer:
    """The daemon's answer to ``query``, read from Redis (the same on every instance)."""

    TYPE: ClassVar[str] = "answer"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    what: str = attrs.field(validator=_one_of(QUERY_SUBJECTS))
    data: dict[str, Any] = attrs.field(factory=dict, validator=_view_object)
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
    | Done
    | Status
    | Job
    | Follow
    | Query
    | Answer
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
