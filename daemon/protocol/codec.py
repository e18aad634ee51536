"""JSON bytes to message objects and back: the one place the cattrs converter is built.

Rules of this module:

- A message on the wire is one JSON object whose ``type`` member names the message class
  (:data:`~schedd.protocol.messages.MESSAGE_TYPES`); the other members are the class's fields.
  :func:`encode` always writes ``type`` first and every field, ``null`` and empty ones included.
  :func:`decode` accepts any member order and fills omitted optional fields with their defaults.
- :func:`decode` raises only :class:`~schedd.errors.ProtocolError`, whatever the input, with one
  of three codes: ``E_MALFORMED`` (not UTF-8 JSON, or not an object), ``E_UNKNOWN_TYPE``
  (``type`` missing, not a string or not a message), ``E_BAD_FIELD`` (a field missing, unknown,
  of the wrong JSON type or breaking a rule, with its path: ``must not be empty @ $.job_id``).
  Shape problems (missing, unknown, non-object) are all listed, up to ten; value rules run in
  the constructor and report the first one broken. ``E_TOO_LARGE`` is raised by
  :mod:`schedd.protocol.framing`; ``E_VERSION`` by the daemon when ``hello.version`` is not one
  it speaks.
- cattrs only shapes data (objects into classes, extra keys refused); every value rule is an attrs
  validator in :mod:`~schedd.protocol.messages`, so a value is checked once, and the same way
  whether it came from the wire or from Python. Primitive fields therefore pass through cattrs
  unconverted: the JSON number ``5`` is never turned into the string ``"5"``.
- :func:`decode` builds a message whose members are all plain values (fields of attrs classes
  absent, ``null`` or ``[]``) with its class's constructor directly, which is all cattrs would
  do with it; anything the constructor refuses takes the general path, so the errors are the
  same (docs/decisions/0028-sdk-cpu.md).
- :func:`encode` raises ``TypeError`` if an opaque field (``payload``, ``output``, ``data``,
  ``capabilities``...) holds something JSON cannot carry; that is a bug of the sender, not a
  protocol error.
- :data:`ERROR_CODES` is the one table of every ``error.code`` the daemon sends; docs/protocol.md
  carries the same table and a test keeps them equal.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from types import NoneType
from typing import Any, Final, cast, get_args, get_origin

import attrs
import cattrs
import orjson
from cattrs.errors import (
    AttributeValidationNote,
    BaseValidationError,
    ClassValidationError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.strategies import configure_tagged_union
from cattrs.v import format_exception, transform_error

from schedd.errors import ProtocolError
from schedd.protocol.fields import _check_name, _json_type
from schedd.protocol.messages import (
    MESSAGE_TYPES,
    Assign,
    Done,
    Error,
    Heartbeat,
    Hello,
    InvalidField,
    Job,
    Message,
    Query,
    Result,
    Submit,
    Welcome,
)

__all__ = [
    "ERROR_CODES",
    "E_ATTACHMENT",
    "E_AUTH",
    "E_BAD_BATCH",
    "E_BAD_FIELD",
    "E_DETACHED",
    "E_FORBIDDEN",
    "E_IDENTITY",
    "E_INFLIGHT",
    "E_INTERNAL",
    "E_MALFORMED",
    "E_RATE",
    "E_ROLE",
    "E_SHUTTING_DOWN",
    "E_TOO_LARGE",
    "E_UNAVAILABLE",
    "E_UNKNOWN_TYPE",
    "E_VERSION",
    "BatchElement",
    "BatchItemError",
    "converter",
    "decode",
    "encode",
    "encode_batch",
    "encode_with_ref",
    "is_batch",
    "split_batch",
]

# Codes of the protocol layer itself.
E_MALFORMED: Final = "E_MALFORMED"
E_UNKNOWN_TYPE: Final = "E_UNKNOWN_TYPE"
E_BAD_FIELD: Final = "E_BAD_FIELD"
E_TOO_LARGE: Final = "E_TOO_LARGE"
E_VERSION: Final = "E_VERSION"
E_ATTACHMENT: Final = "E_ATTACHMENT"
E_BAD_BATCH: Final = "E_BAD_BATCH"
# Codes the daemon's connection handling sends.
E_AUTH: Final = "E_AUTH"
E_ROLE: Final = "E_ROLE"
E_IDENTITY: Final = "E_IDENTITY"
E_RATE: Final = "E_RATE"
E_INFLIGHT: Final = "E_INFLIGHT"
E_DETACHED: Final = "E_DETACHED"
E_FORBIDDEN: Final = "E_FORBIDDEN"
E_UNAVAILABLE: Final = "E_UNAVAILABLE"
E_SHUTTING_DOWN: Final = "E_SHUTTING_DOWN"
E_INTERNAL: Final = "E_INTERNAL"

ERROR_CODES: Final[dict[str, str]] = {
    # Protocol: the message itself is wrong.
    E_MALFORMED: "the frame is not UTF-8 JSON, is not a JSON object, or is an empty TCP frame",
    E_UNKNOWN_TYPE: "the message has no `type` member, or it names no message of this protocol",
    E_BAD_FIELD: "a field is missing, unknown, of the wrong JSON type or breaks a rule "
    "(the message gives the path of each problem found)",
    E_TOO_LARGE: "the frame is longer than the configured limit (the connection is closed), or "
    "a message declares attachments over `[limits] max_attachment` or `max_attachments` (the "
    "message is refused; the connection is closed only when an attachment is over "
    "`max_attachment`)",
    E_VERSION: "`hello.version` is a protocol version this daemon does not speak",
    E_ATTACHMENT: "the attachment frames do not match the message that declares them (fewer "
    "frames than declared before the next message, a size other than declared, or a binary "
    "frame no message declared); the connection is closed",
    E_BAD_BATCH: "an array frame is empty, holds more messages than the welcome's `max_batch`, "
    "is not valid JSON (the whole frame is refused), or one of its elements is not a JSON "
    "object or declares attachments (that element alone is refused, the others are handled)",
    # Connection: the message is well-formed but not allowed here.
    E_AUTH: "the `hello` token is missing or not accepted; the connection is closed",
    E_ROLE: "this message is not allowed for the connection's role or at this point "
    "(before `hello`, a node before `register`, or a second `hello` or `register`), or no "
    "`hello` came within the handshake timeout",
    E_IDENTITY: "a node spoke for a node_id that is not its connection's, or registered a "
    "node_id its principal may not use (another principal's, or outside its allowed patterns)",
    E_RATE: "the connection sent more messages per second than allowed",
    E_INFLIGHT: "the connection has too many submitted jobs not yet done",
    E_DETACHED: "another connection of the principal followed the job (`follow` or a duplicate "
    "`submit`): the job's `progress` and `done` go there, not here",
    E_FORBIDDEN: "an `admin` action from a connection whose `hello` token is not an admin "
    "token; nothing was changed",
    E_UNAVAILABLE: "the daemon cannot reach its store right now; retry later",
    E_SHUTTING_DOWN: "the daemon is shutting down and accepts no new submits; use another instance",
    E_INTERNAL: "the daemon failed unexpectedly; the message may be retried",
    # Scheduling: the store refused the operation (schedd.errors.SCRIPT_ERRORS).
    "E_NO_NODE": "the node is not registered (its registration expired): reconnect and register",
    "E_NO_JOB": "no job has this job_id (never submitted, or no longer retained)",
    "E_STALE_EPOCH": "the node registered again since; this message belongs to an older "
    "registration",
    "E_STALE_ATTEMPT": "this message is about a job attempt that is not current for this node "
    "(an older attempt, or the job moved to another node, was queued again or finished): drop "
    "that attempt",
    "E_WRONG_OWNER": "another daemon instance now holds this node's connection",
    "E_NO_CAPACITY": "no node has a free slot and the job may not wait in the queue",
    "E_QUEUE_FULL": "the queue of the job's pools is full; retry later",
    "E_QUOTA": "a quota of the submitting principal: the message begins with its name "
               "(`max_queued`, `max_payload_bytes`); retry once one of its jobs ended",
    "E_RATE_LIMITED": "the submitting principal is over its submit rate; the message ends with "
                      "`retry_after_ms=<ms>`, the wait until it may submit again",
    "E_TOO_BIG": "the job's `cost` is above the capacity of every live node of its pools: no "
    "node could ever run it as it stands",
    "E_NOT_YOURS": "the job belongs to another principal; or a `query` `jobs` names another "
                   "principal than the connection's",
    "E_BAD_STATE": "the node or job is not in a state that allows this message (`drain` from a "
    "node taken offline; an `admin` undrain of an offline node, requeue of a job that ended "
    "`done`)",
    "E_BAD_ARG": "the daemon rejected an argument of the request (e.g. an unknown pool)",
    "E_BAD_DELAY": "a submit's delay or not_before puts the job further ahead than the daemon's "
    "max_delay, or gives both",
    "E_BAD_TTL": "a submit's result_ttl is over the daemon's max_result_ttl",
    # Pipelines: a submit's stages were refused (schedd.session.stages); nothing was stored.
    "E_TOO_MANY_STAGES": "a chain of the submit's `stages` is longer than 8 stages, or the "
    "pipeline has more than 64 stages in all",
    "E_TOO_MANY_BRANCHES": "a stage of the submit's `stages` fans out into more than 16 branches",
    "E_BAD_STAGE": "a stage of the submit's `stages` is malformed or maps to no pool (the "
    "message gives its path, e.g. `stages[1].branches.de[0]`)",
    "E_DUPLICATE_SEQ": "another job of the principal's ordered session has this `seq`, or the "
    "session already reported it `skipped`; a resubmit of the same `job_id` is not refused",
    "E_NO_SESSION": "the principal has no ordered session of this name (never given a `seq`, "
    "or its retention ended); another principal's session of the same name is not this one",
}


# --------------------------------------------------------------------------------------------
# The converter.
# --------------------------------------------------------------------------------------------


def _passthrough(value: Any, _: Any) -> Any:
    return value


def _identity(value: Any) -> Any:
    return value


def _is_plain_value(type_: Any) -> bool:
    """True for field types the attrs validators check on their own (all but attrs classes)."""
    if type_ in (str, int, float, bool, Any, NoneType):
        return True
    origin = get_origin(type_)
    if origin is typing.Literal:
        return True
    if origin in (dict, list):
        return not any(attrs.has(arg) for arg in get_args(type_))
    if origin in (types.UnionType, typing.Union):
        # `str | None` and the like: the validator checks both cases, and skipping cattrs's
        # generic optional hook (a dispatch per call) is most of the decode time saved.
        return all(_is_plain_value(arg) for arg in get_args(type_))
    return False


def _is_list_of_classes(type_: Any) -> bool:
    return get_origin(type_) is list and attrs.has(get_args(type_)[0])


def _format_exception(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, InvalidField):
        return exc.reason
    if isinstance(exc, TypeError) and exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return format_exception(exc, type_)


def _class_hook(cls: type[Any], conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """Structure an attrs class from a JSON object, reporting validator failures with a path."""
    generated = make_dict_structure_fn(
        cls, conv, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True
    )
    name = cls.__name__

    def structure(value: Any, _: Any) -> Any:
        if value.__class__ is not dict:
            raise TypeError(f"expected an object, got {_json_type(value)}")
        try:
            return generated(value, cls)
        except ClassValidationError as exc:
            # cattrs wraps an exception of the constructor (our validators) without a path;
            # attach the field path the validator named, so transform_error reports it.
            if len(exc.exceptions) == 1 and isinstance(exc.exceptions[0], InvalidField):
                error = exc.exceptions[0]
                if not getattr(error, "__notes__", None):
                    error.add_note(AttributeValidationNote(f"Structuring {name}", error.path, None))
                    raise ClassValidationError(exc.message, [error], cls) from None
            raise

    return structure


def _list_of_classes_hook(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    item_type = get_args(type_)[0]
    item_hook = conv.get_structure_hook(item_type)

    def structure(value: Any, _: Any) -> list[Any]:
        if value.__class__ is not list:
            raise TypeError(f"expected an array, got {_json_type(value)}")
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(item_hook(item, item_type))
            except Exception as exc:
                exc.add_note(IterableValidationNote(f"Structuring @ {index}", index, item_type))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {type_!r}", errors, type_)
        return items

    return structure


# Fields a message leaves out when they hold their default, so that a peer that predates them
# (and refuses unknown fields) still reads the message when they are not used.
_OMITTED_WHEN_DEFAULT: Final[dict[type[Any], tuple[str, ...]]] = {
    Query: ("state", "pool", "principal", "node", "since", "until", "limit", "cursor"),
    Submit: ("attachments", "seq", "gap_timeout"),
    Assign: ("attachments",),
    Result: ("attachments",),
    Done: ("attachments", "session_id", "seq"),
    Job: ("attachments",),
    Hello: ("batch",),
    Welcome: ("max_batch",),
}


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    # Primitives have direct hooks in cattrs (`str(value)`, which would turn 5 into "5"); those
    # must be replaced one by one, the predicate covers the rest.
    for primitive in (str, int, float, bool):
        conv.register_structure_hook(primitive, _passthrough)
    conv.register_structure_hook_func(_is_plain_value, _passthrough)
    conv.register_structure_hook_factory(_is_list_of_classes, _list_of_classes_hook)
    conv.register_structure_hook_factory(attrs.has, _class_hook)
    # Opaque JSON goes to orjson as it is; cattrs would otherwise copy every nested dict.
    conv.register_unstructure_hook_func(_is_plain_value, _identity)
    tags = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
    for cls, names in _OMITTED_WHEN_DEFAULT.items():  # left out by the union's hook too
        omitted: dict[str, Any] = {name: override(omit_if_default=True) for name in names}
        conv.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, conv, **omitted))
    configure_tagged_union(Message, conv, tag_generator=tags.__getitem__, tag_name="type")
    return conv


converter: Final = _make_converter()
"""The protocol's converter; ``converter.structure(obj, Message)`` dispatches on ``type``."""

_MAX_PROBLEMS: Final = 10

_STRUCTURE: Final[dict[str, tuple[Callable[[Any, Any], Any], type[Any]]]] = {
    tag: (converter.get_structure_hook(cls), cls) for tag, cls in MESSAGE_TYPES.items()
}


def _unstructure_fn(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    overrides: dict[str, Any] = {
        name: override(omit_if_default=True) for name in _OMITTED_WHEN_DEFAULT.get(cls, ())
    }
    return make_dict_unstructure_fn(cls, converter, **overrides)


_UNSTRUCTURE: Final[dict[type[Any], tuple[str, Callable[[Any], dict[str, Any]]]]] = {
    cls: (tag, _unstructure_fn(cls)) for tag, cls in MESSAGE_TYPES.items()
}


# --------------------------------------------------------------------------------------------
# Encode and decode: the hot path. They skip the tagged-union hook to avoid a dict copy, put
# `type` first on the wire, and turn an unknown tag into E_UNKNOWN_TYPE rather than E_BAD_FIELD.
# --------------------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """Serialize a message to compact UTF-8 JSON with ``type`` first."""
    tag, unstructure = _UNSTRUCTURE[message.__class__]
    obj = {"type": tag}
    obj.update(unstructure(message))
    return orjson.dumps(obj)


def encode_with_ref(message: Message, ref: str) -> bytes:
    """What ``encode(attrs.evolve(message, ref=ref))`` writes, without that copy of the message
    and the second run of its validators (a request gets its ``ref`` as it is sent: every
    message has ``ref`` as its last field). ``ref`` is checked by the field's own rule:
    ``InvalidField`` as ``evolve`` would raise."""
    _check_name(ref, "ref")
    tag, unstructure = _UNSTRUCTURE[message.__class__]
    obj = {"type": tag}
    obj.update(unstructure(message))
    obj["ref"] = ref
    return orjson.dumps(obj)


_IDLE_BEAT_KEYS: Final = frozenset({"inflight", "running", "load"})


def _idle_beat(obj: dict[str, Any]) -> Heartbeat | None:
    """The heartbeat of an idle node, built without cattrs: ``inflight`` an int, ``running``
    empty, ``load`` a number. Most of a large fleet sends exactly this every second
    (docs/decisions/0008-decode-identical-heartbeats-once.md). Anything else, or anything the
    message's own validators refuse, returns None and takes the general path (and its error
    text)."""
    inflight, running, load = obj["inflight"], obj["running"], obj["load"]
    if (inflight.__class__ is not int or running.__class__ is not list or running
            or load.__class__ not in (int, float)):
        return None
    try:
        return Heartbeat(inflight=inflight, running=[], load=float(load))
    except Exception:  # refused by a validator: the general path says why
        return None


def _direct_shape(cls: type[Any]) -> tuple[frozenset[str], frozenset[str], tuple[str, ...]]:
    """What :func:`decode` may hand to ``cls(**obj)`` itself: (the fields cattrs passes through
    as they are, every field, the fields of attrs classes) of ``cls``."""
    fields = attrs.fields(cls)
    plain = frozenset(f.name for f in fields if _is_plain_value(f.type))
    return plain, frozenset(f.name for f in fields), tuple(
        f.name for f in fields if f.name not in plain)


_DIRECT: Final[dict[str, tuple[type[Any], frozenset[str], frozenset[str], tuple[str, ...]]]] = {
    tag: (cls, *_direct_shape(cls)) for tag, cls in MESSAGE_TYPES.items()
}


def _direct(obj: dict[str, Any], entry: tuple[type[Any], frozenset[str], frozenset[str],
                                               tuple[str, ...]]) -> Any:
    """The message ``obj`` is, built by its class's constructor without cattrs, or None.

    When every member is a field and each field of attrs classes is absent, ``null`` or ``[]``
    (an attachment list or ``error`` holding nothing), cattrs would only pass the members
    through to the constructor as they are (:func:`_make_converter`): calling it directly
    builds the same message, its validators run the same. Anything else, and anything the
    constructor refuses, returns None: the general path decodes it or says why, in its words.
    The checks before the call only spare it for input it would refuse anyway: the
    constructor itself refuses unknown and missing members (``TypeError``) and values of a
    field of attrs classes that are not instances of them (its validators).
    """
    cls, plain, every, nested = entry
    keys = obj.keys()
    if not keys <= plain:
        if not keys <= every:
            return None
        for name in nested:
            value = obj.get(name)
            if value is not None and (value.__class__ is not list or value):
                return None
    try:
        return cls(**obj)
    except Exception:  # missing or refused: the general path says why
        return None


def decode(data: bytes | bytearray | memoryview | str) -> Message:
    """Parse one JSON message; raise :class:`~schedd.errors.ProtocolError` if it is not valid."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(E_MALFORMED, f"not valid JSON: {exc}") from None
    if obj.__class__ is not dict:
        raise ProtocolError(E_MALFORMED, f"a message must be a JSON object, not {_json_type(obj)}")
    tag = obj.pop("type", None)
    if tag is None:
        raise ProtocolError(E_UNKNOWN_TYPE, "the message has no 'type'")
    entry = _STRUCTURE.get(tag) if tag.__class__ is str else None
    if entry is None:
        shown = repr(tag)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise ProtocolError(E_UNKNOWN_TYPE, f"unknown message type {shown}")
    if tag == "heartbeat" and obj.keys() == _IDLE_BEAT_KEYS:
        beat = _idle_beat(obj)
        if beat is not None:
            return beat
    direct = _direct(obj, _DIRECT[tag])
    if direct is not None:
        return cast("Message", direct)
    structure, cls = entry
    try:
        message: Message = structure(obj, cls)
    except BaseValidationError as exc:
        problems = transform_error(exc, format_exception=_format_exception)
        if len(problems) > _MAX_PROBLEMS:  # keep the error reply small whatever was sent
            problems[_MAX_PROBLEMS:] = [f"and {len(problems) - _MAX_PROBLEMS} more"]
        raise ProtocolError(E_BAD_FIELD, f"{tag}: {'; '.join(problems)}") from None
    except Exception as exc:  # a validator or cattrs bug must still not escape as a crash
        raise ProtocolError(E_BAD_FIELD, f"{tag}: {exc}") from None
    return message


# --------------------------------------------------------------------------------------------
# Array frames: one frame holding a JSON array of messages (docs/protocol.md, "Array frames").
# Each element is handed on as the bytes of one message, to go the path a frame of its own
# goes; a single message's frame never comes here.
# --------------------------------------------------------------------------------------------


class BatchItemError(ProtocolError):
    """One element of an array frame is refused (``E_BAD_BATCH``); the others are handled.
    ``ref`` and ``job_id`` are the element's, when it is an object that has them."""

    def __init__(self, message: str, ref: str | None = None, job_id: str | None = None) -> None:
        super().__init__(E_BAD_BATCH, message)
        self.ref = ref
        self.job_id = job_id


class BatchElement:
    """One message of an array frame: ``data``, the JSON bytes of its object (a plain
    ``bytes``, as a frame's)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def names(self) -> tuple[str | None, str | None]:
        """Its ``ref`` and ``job_id``, when valid ones: what an error about it names."""
        obj = orjson.loads(self.data)
        ref, job_id = obj.get("ref"), obj.get("job_id")
        return (ref if _valid_name("ref", ref) else None,
                job_id if _valid_name("job_id", job_id) else None)


def _valid_name(field: str, value: object) -> bool:
    try:
        Error(code=E_BAD_BATCH, **{field: value})  # type: ignore[arg-type]
    except Exception:
        return False
    return True


def is_batch(data: bytes | bytearray | memoryview | str) -> bool:
    """Whether a frame holds an array (its first non-blank character is ``[``)."""
    head = data[:64]
    if isinstance(head, memoryview):
        head = head.tobytes()
    head = head.lstrip()
    return head[:1] in (b"[", "[")


def _item_error(message: str, obj: dict[str, Any] | None = None) -> BatchItemError:
    """The refusal of one element, with its ``ref`` and ``job_id`` when they are valid ones."""
    if obj is None:
        return BatchItemError(message)
    return BatchItemError(message, *BatchElement(orjson.dumps(obj)).names())


def split_batch(data: bytes | bytearray | memoryview | str, max_batch: int,
                ) -> list[BatchElement | BatchItemError]:
    """The messages of an array frame, each as the JSON bytes of one message, in order; an
    element that may not be in an array is a :class:`BatchItemError` in its place. Raises
    :class:`~schedd.errors.ProtocolError` (``E_BAD_BATCH``) when the frame is refused whole:
    not valid JSON, empty, or longer than ``max_batch``."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(E_BAD_BATCH, f"an array frame that is not valid JSON: {exc}") from None
    if items.__class__ is not list:
        raise ProtocolError(E_BAD_BATCH,
                            f"an array frame holds a JSON array, not {_json_type(items)}")
    if not items:
        raise ProtocolError(E_BAD_BATCH, "an array frame holds at least one message")
    if len(items) > max_batch:
        raise ProtocolError(E_BAD_BATCH, f"an array frame holds at most {max_batch} messages "
                            f"(max_batch); this one has {len(items)}")
    out: list[BatchElement | BatchItemError] = []
    for index, obj in enumerate(items):
        if obj.__class__ is not dict:
            out.append(_item_error(f"element {index} of the array frame is {_json_type(obj)}, "
                                   "not a message (a JSON object)"))
        elif obj.get("attachments"):
            out.append(_item_error(
                f"element {index} of the array frame declares attachments: a message with "
                "attachments goes in a frame of its own, its attachment frames after it", obj))
        else:
            out.append(BatchElement(orjson.dumps(obj)))
    return out


def encode_batch(messages: list[bytes]) -> bytes:
    """Encoded messages (:func:`encode`'s bytes) as one array frame."""
    return b"[" + b",".join(messages) + b"]"
