"""The ``query`` message and its ``answer``: global views and one page of a principal's jobs.

Rules of this module (as for :mod:`schedd.protocol.messages`, which lists these classes in the
protocol's union): frozen attrs classes, every value rule a validator, no I/O. The job filters
apply to ``what="jobs"`` only; any of them with another ``what`` is ``E_BAD_FIELD``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, Literal, TypeAlias

import attrs

from schedd.protocol.fields import (
    _later_than,
    _one_of,
    _only_for,
    _opt_cursor,
    _opt_int,
    _opt_name,
    _opt_one_of,
    _ref,
    _view_object,
)
from schedd.protocol.states import JOB_STATES

__all__ = ["MAX_JOB_PAGE", "QUERY_SUBJECTS", "Answer", "Query"]

Sender: TypeAlias = Literal["node", "client", "daemon"]

QUERY_SUBJECTS: Final[frozenset[str]] = frozenset(
    {"nodes", "pools", "stats", "clients", "jobs", "usage"}
)
MAX_JOB_PAGE: Final = 500
"""Most jobs one ``answer`` to ``query`` ``jobs`` lists (``limit``)."""
_JOB_FILTERS: Final = ("state", "pool", "principal", "node", "since", "until", "limit", "cursor")
_jobs_only = _only_for("jobs")


@attrs.frozen(kw_only=True)
class Query:
    """A client asks for a global view (for the CLI); answered with ``answer``. With
    ``what="jobs"`` it lists the jobs of the connection's principal that match the filters,
    newest submission first, a page at a time (``cursor`` from the answer continues it)."""

    TYPE: ClassVar[str] = "query"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"client"})

    what: str = attrs.field(validator=_one_of(QUERY_SUBJECTS))
    state: str | None = attrs.field(default=None, validator=_jobs_only(_opt_one_of(JOB_STATES)))
    pool: str | None = attrs.field(default=None, validator=_jobs_only(_opt_name))
    principal: str | None = attrs.field(default=None, validator=_jobs_only(_opt_name))
    node: str | None = attrs.field(default=None, validator=_jobs_only(_opt_name))
    since: int | None = attrs.field(default=None, validator=_jobs_only(_opt_int(0)))
    until: int | None = attrs.field(default=None, validator=_jobs_only(_later_than("since")))
    limit: int | None = attrs.field(default=None, validator=_jobs_only(_opt_int(1, MAX_JOB_PAGE)))
    cursor: str | None = attrs.field(default=None, validator=_jobs_only(_opt_cursor))
    ref: str | None = _ref()

    def filters(self) -> dict[str, Any]:
        """The job filters given (``what="jobs"``), by name."""
        return {name: getattr(self, name) for name in _JOB_FILTERS
                if getattr(self, name) is not None}


@attrs.frozen(kw_only=True)
class Answer:
    """The daemon's answer to ``query``, read from Redis (the same on every instance)."""

    TYPE: ClassVar[str] = "answer"
    SENT_BY: ClassVar[frozenset[Sender]] = frozenset({"daemon"})

    what: str = attrs.field(validator=_one_of(QUERY_SUBJECTS))
    data: dict[str, Any] = attrs.field(factory=dict, validator=_view_object)
    ref: str | None = _ref()
