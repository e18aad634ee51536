"""The parts of messages: the objects a message carries in a field (:class:`RunningJob`,
:class:`Attachment`; :class:`ErrorInfo` is :mod:`~schedd.protocol.outcome`'s, re-exported here)
and the validators of those fields.

Rules of this module: as :mod:`~schedd.protocol.messages` (frozen attrs classes, every value
rule an attrs validator); it imports no I/O library.
"""

from __future__ import annotations

from typing import Any

import attrs

from schedd.protocol.fields import (
    MAX_ATTACHMENTS,
    MAX_RUNNING,
    InvalidField,
    _int,
    _json_type,
    _name,
)
from schedd.protocol.outcome import ErrorInfo, _opt_error_info

__all__ = [
    "Attachment",
    "ErrorInfo",
    "RunningJob",
    "_attachments",
    "_opt_error_info",
    "_running_jobs",
]


@attrs.frozen(kw_only=True)
class RunningJob:
    """One job a (re)registering node is still running."""

    job_id: str = attrs.field(validator=_name)
    attempt: int = attrs.field(validator=_int(1))


def _running_jobs(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    if not isinstance(value, list):
        raise InvalidField(path, f"must be an array, got {_json_type(value)}")
    if len(value) > MAX_RUNNING:
        raise InvalidField(path, f"must have at most {MAX_RUNNING} entries")
    for index, item in enumerate(value):
        if not isinstance(item, RunningJob):
            raise InvalidField(f"{path}[{index}]", "must be a RunningJob")


@attrs.frozen(kw_only=True)
class Attachment:
    """One binary attachment a message declares; its bytes follow the message in a binary
    frame of their own (schedd.protocol.attachments), in declaration order."""

    name: str = attrs.field(validator=_name)
    size: int = attrs.field(validator=_int(0))
    media_type: str = attrs.field(default="application/octet-stream", validator=_name)


def _attachments(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    if not isinstance(value, list):
        raise InvalidField(path, f"must be an array, got {_json_type(value)}")
    if len(value) > MAX_ATTACHMENTS:
        raise InvalidField(path, f"must have at most {MAX_ATTACHMENTS} entries")
    names: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, Attachment):
            raise InvalidField(f"{path}[{index}]", "must be an Attachment")
        if item.name in names:
            raise InvalidField(f"{path}[{index}].name", f"repeats {item.name!r}")
        names.add(item.name)


