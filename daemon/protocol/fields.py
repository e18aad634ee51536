"""The field rules of the wire protocol: its limits, :class:`InvalidField`, and the checks and
attrs validators every message class is built from (schedd.protocol.messages).

The checks are plain functions: they run on the decode hot path. This module imports no I/O
library.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any, Final, TypeAlias

import attrs

from schedd.protocol.tracecontext import traceparent_problem, tracestate_problem

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
MAX_ATTACHMENTS: Final = 16
"""Most binary attachments one message declares (``attachments``)."""
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


def _opt_one_of(allowed: Collection[str]) -> Validator:
    check = _one_of(allowed)

    def opt(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is not None:
            check(instance, attribute, value)

    return opt


def _only_for(what: str) -> Callable[[Validator], Validator]:
    """A field that only a message with ``what`` equal to this may set (a filter of one query
    subject): anywhere else it must stay null. Wraps the field's own validator."""

    def wrap(check: Validator) -> Validator:
        def both(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
            if value is not None and instance.what != what:
                raise InvalidField(attribute.name, f"is a filter of what={what} only")
            check(instance, attribute, value)

        return both

    return wrap


def _later_than(other: str) -> Validator:
    """An optional integer >= 0 greater than the field ``other`` when both are set."""
    check = _opt_int(0)

    def later(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(instance, attribute, value)
        before = getattr(instance, other)
        if value is not None and before is not None and value <= before:
            raise InvalidField(attribute.name, f"must be later than {other}")

    return later


_CURSOR: Final = re.compile(r"^\d{1,16}\.\d{1,16}$")


def _opt_cursor(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A listing's cursor as a page returned it: ``<score>.<skip>``."""
    if value is not None and (not isinstance(value, str) or not _CURSOR.match(value)):
        raise InvalidField(attribute.name, "is not a cursor an answer returned")


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


def _opt_traceparent(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidField(attribute.name, f"must be a string, got {_json_type(value)}")
    problem = traceparent_problem(value)
    if problem is not None:
        raise InvalidField(attribute.name, problem)


def _opt_tracestate(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A tracestate only goes with a traceparent (the field before it)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidField(attribute.name, f"must be a string, got {_json_type(value)}")
    if getattr(instance, "traceparent", None) is None:
        raise InvalidField(attribute.name, "needs a traceparent")
    problem = tracestate_problem(value)
    if problem is not None:
        raise InvalidField(attribute.name, problem)


def _ref() -> Any:
    # A fresh field per class: attrs orders fields by creation, so ``ref`` stays last.
    return attrs.field(default=None, validator=_opt_name)
