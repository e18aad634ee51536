"""How a job or a stage ended on the wire: its states, :class:`ErrorInfo`, and the rule that
ties ``ok``, ``state`` and ``error`` together (``ok`` exactly when ``state`` is ``done``, and no
error then). Shared by :mod:`schedd.protocol.messages` and :mod:`schedd.protocol.pipelines`."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import attrs

from schedd.protocol.fields import InvalidField, _bool, _name, _text
from schedd.protocol.states import TERMINAL_STATES, JobState, TerminalState

__all__ = [
    "TERMINAL_STATES",
    "ErrorInfo",
    "JobState",
    "Sender",
    "TerminalState",
]

Sender: TypeAlias = Literal["node", "client", "daemon"]


@attrs.frozen(kw_only=True)
class ErrorInfo:
    """Why a job failed: a short machine-readable ``code`` and a human ``message``."""

    code: str = attrs.field(validator=_name)
    message: str = attrs.field(default="", validator=_text)


def _opt_error_info(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, ErrorInfo):
        raise InvalidField(attribute.name, "must be an ErrorInfo or null")


def _done_ok(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    _bool(instance, attribute, value)
    if value is not (instance.state == "done"):
        raise InvalidField(attribute.name, "must be true exactly when state is 'done'")


def _done_error(instance: Any, attribute: attrs.Attribute[Any], value: object) -> None:
    _opt_error_info(instance, attribute, value)
    if instance.ok and value is not None:
        raise InvalidField(attribute.name, "must be null when ok is true")
