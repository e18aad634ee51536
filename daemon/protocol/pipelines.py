"""The wire parts of pipelines (docs/protocol.md, "Pipelines"): the ``stages`` of a ``submit``
(only their JSON shape here; the daemon checks the stages themselves, schedd.session.stages) and
``stage_done``, which the daemon sends once per stage that ended."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs

from schedd.protocol.fields import (
    InvalidField,
    _any_json,
    _int,
    _json_type,
    _name,
    _one_of,
    _opt_name,
    _ref,
)
from schedd.protocol.outcome import (
    TERMINAL_STATES,
    ErrorInfo,
    Sender,
    TerminalState,
    _done_error,
    _done_ok,
)


def _opt_stages(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, list):
        raise InvalidField(attribute.name, f"must be an array or null, got {_json_type(value)}")
    _any_json(instance, attribute, value)


@attrs.frozen(kw_only=True)
class StageDone:
    """A stage of a pipeline ended; sent to the pipeline's client once per stage."""

    TYPE: ClassVar[str] = "stage_done"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    job_id: str = attrs.field(validator=_name)
    stage: str = attrs.field(validator=_name)
    branch: str | None = attrs.field(default=None, validator=_opt_name)
    index: int = attrs.field(default=0, validator=_int(0))
    state: TerminalState = attrs.field(validator=_one_of(TERMINAL_STATES))
    ok: bool = attrs.field(validator=_done_ok)
    output: Any = None
    error: ErrorInfo | None = attrs.field(default=None, validator=_done_error)
    ref: str | None = _ref()
