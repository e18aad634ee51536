"""The messages of operator actions: ``admin`` (client), ``acted`` and ``undrain`` (daemon).

Rules of this module (as for :mod:`schedd.protocol.messages`, which lists these classes in the
protocol's union): frozen attrs classes, every value rule a validator, no I/O. Which fields an
action takes is checked here too, so a malformed action is ``E_BAD_FIELD`` before the daemon
looks at it; whether the connection may act at all (``E_FORBIDDEN``) is the daemon's decision.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal, TypeAlias

import attrs

from schedd.protocol.fields import (
    MAX_SECONDS,
    InvalidField,
    _check_mapping,
    _json_type,
    _one_of,
    _opt_float,
    _opt_int,
    _opt_name,
    _opt_text,
    _ref,
)

__all__ = ["ADMIN_ACTIONS", "MAX_ADMIN_JOBS", "REQUEUE_STATES", "Acted", "Admin", "Undrain"]

Sender: TypeAlias = Literal["node", "client", "daemon"]

#: what an operator may do
ADMIN_ACTIONS: Final = frozenset({"drain", "undrain", "cancel", "requeue"})
#: the most jobs one ``admin`` requeue by filter acts on (a larger ``limit`` is refused)
MAX_ADMIN_JOBS: Final = 100
#: the states a requeue takes jobs back from
REQUEUE_STATES: Final = frozenset({"failed", "canceled", "timed_out"})


def _states(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    if not isinstance(value, list):
        raise InvalidField(path, f"must be an array, got {_json_type(value)}")
    if len(value) > len(REQUEUE_STATES):
        raise InvalidField(path, f"must have at most {len(REQUEUE_STATES)} entries")
    choices = ", ".join(sorted(REQUEUE_STATES))
    for index, item in enumerate(value):
        if not isinstance(item, str) or item not in REQUEUE_STATES:
            raise InvalidField(f"{path}[{index}]", f"must be one of: {choices}")


def _action_fields(instance: Admin) -> None:
    """Which fields each action takes: a node for drain and undrain, a job for cancel, a job
    or a filter for requeue."""
    filtered = bool(instance.states) or instance.pool is not None \
        or instance.since is not None or instance.limit is not None
    if instance.action in ("drain", "undrain"):
        if instance.node_id is None:
            raise InvalidField("node_id", f"is required for {instance.action}")
        if instance.job_id is not None or filtered:
            raise InvalidField("action", f"{instance.action} takes node_id only")
    elif instance.node_id is not None:
        raise InvalidField("node_id", f"must be null for {instance.action}")
    elif instance.action == "cancel":
        if instance.job_id is None:
            raise InvalidField("job_id", "is required for cancel")
        if filtered:
            raise InvalidField("action", "cancel takes job_id only")
    elif instance.job_id is not None and filtered:
        raise InvalidField("job_id", "must be null when a requeue names a filter")


@attrs.frozen(kw_only=True)
class Admin:
    """An operator's action (an admin token's connection only); answered with ``acted``."""

    TYPE: ClassVar[str] = "admin"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    action: str = attrs.field(validator=_one_of(ADMIN_ACTIONS))
    node_id: str | None = attrs.field(default=None, validator=_opt_name)
    job_id: str | None = attrs.field(default=None, validator=_opt_name)
    states: list[str] = attrs.field(factory=list, validator=_states)
    pool: str | None = attrs.field(default=None, validator=_opt_name)
    since: float | None = attrs.field(
        default=None, validator=_opt_float(positive=True, high=MAX_SECONDS))
    limit: int | None = attrs.field(default=None, validator=_opt_int(1, MAX_ADMIN_JOBS))
    ref: str | None = _ref()

    def __attrs_post_init__(self) -> None:
        _action_fields(self)


def _results(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    path = attribute.name
    if not isinstance(value, list):
        raise InvalidField(path, f"must be an array, got {_json_type(value)}")
    if len(value) > MAX_ADMIN_JOBS:
        raise InvalidField(path, f"must have at most {MAX_ADMIN_JOBS} entries")
    for index, item in enumerate(value):
        _check_mapping(item, f"{path}[{index}]")


@attrs.frozen(kw_only=True)
class Acted:
    """What an ``admin`` action did: one result per node or job it touched."""

    TYPE: ClassVar[str] = "acted"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    action: str = attrs.field(validator=_one_of(ADMIN_ACTIONS))
    results: list[dict[str, Any]] = attrs.field(factory=list, validator=_results)
    ref: str | None = _ref()


@attrs.frozen(kw_only=True)
class Undrain:
    """Daemon to node: an operator lifted the node's drain; take new work again."""

    TYPE: ClassVar[str] = "undrain"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    reason: str | None = attrs.field(default=None, validator=_opt_text)
    ref: str | None = _ref()
