"""What a job listing asks for: the filter, its page size, its cursor and its time bounds.

Rules of this module:

- A :class:`JobFilter` that breaks a rule cannot be constructed: every field is checked by the
  protocol's field checks and raises :class:`~schedd.protocol.InvalidField` (a ``ValueError``)
  naming the field, so the wire (``query`` ``jobs``), the ui's JSON API and the CLI refuse the
  same input with the same words.
- Times are unix milliseconds, bounds of the job's **submission** time: ``since`` inclusive,
  ``until`` exclusive. Pages come newest first.
- A page is at most :data:`MAX_JOB_PAGE` jobs; a larger ``limit`` is refused, not clamped, so a
  caller learns the bound instead of silently getting less.
- A cursor is opaque to callers: ``<score>.<skip>``, the submit ms of the entry the next page
  starts at and how many entries with that score the pages before already went through.

Pure: no I/O, no store.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

from schedd.protocol import JOB_STATES, MAX_ID_LEN, MAX_INT, MAX_JOB_PAGE, InvalidField

__all__ = [
    "DEFAULT_JOB_PAGE",
    "EXAMINE_BUDGET",
    "MAX_JOB_PAGE",
    "Cursor",
    "JobFilter",
    "parse_cursor",
    "parse_time_bound",
]

DEFAULT_JOB_PAGE: Final = 50
"""Jobs per page when the caller names no ``limit``."""
EXAMINE_BUDGET: Final = 2000
"""Most index entries one page looks at (a filter the chosen index does not answer is checked
against each job's hash); a page that reaches it ends early, with a cursor to go on."""

_CURSOR = re.compile(r"^(\d{1,16})\.(\d{1,16})$")
_DURATION = re.compile(r"^(\d{1,9})(ms|s|m|h|d)$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@attrs.frozen
class Cursor:
    score: int
    skip: int

    def __str__(self) -> str:
        return f"{self.score}.{self.skip}"


def parse_cursor(text: str, path: str = "cursor") -> Cursor:
    """A cursor a page returned, back as its position; :class:`InvalidField` when it is not one."""
    match = _CURSOR.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidField(path, "is not a cursor a page of jobs returned")
    score, skip = int(match[1]), int(match[2])
    if score > MAX_INT or skip > MAX_INT:
        raise InvalidField(path, "is not a cursor a page of jobs returned")
    return Cursor(score, skip)


def parse_time_bound(text: str, now_ms: int, path: str) -> int:
    """A time bound as unix ms: an integer (unix ms) or a duration before now (``90s``, ``10m``,
    ``2h``, ``7d``, ``500ms``)."""
    text = text.strip()
    if text.isdigit() and len(text) <= 16:
        value = int(text)
        if value <= MAX_INT:
            return value
    match = _DURATION.match(text)
    if match is None:
        raise InvalidField(path, f"{text[:40]!r} is neither unix milliseconds nor a duration "
                           "before now such as 90s, 10m, 2h or 7d")
    return max(0, now_ms - int(match[1]) * _UNIT_MS[match[2]])


def _opt_id(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN or any(
        ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in value
    ):
        raise InvalidField(attribute.name, f"must be a non-empty string of at most {MAX_ID_LEN} "
                           "characters with no control characters")


def _opt_state(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in JOB_STATES:
        raise InvalidField(attribute.name, f"{str(value)[:40]!r} is not a job state (one of "
                           f"{', '.join(JOB_STATES)})")


def _opt_ms(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
        raise InvalidField(attribute.name, f"must be unix milliseconds, an integer in 0..{MAX_INT}")


def _limit(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_JOB_PAGE:
        raise InvalidField(attribute.name, f"must be an integer in 1..{MAX_JOB_PAGE} (jobs per "
                           "page; follow the cursor for more)")


def _opt_cursor(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        parse_cursor(value, attribute.name)  # type: ignore[arg-type]


def _until(instance: JobFilter, attribute: attrs.Attribute[Any], value: object) -> None:
    _opt_ms(instance, attribute, value)
    if value is not None and instance.since is not None and value <= instance.since:  # type: ignore[operator]
        raise InvalidField(attribute.name, "must be later than since")


@attrs.frozen(kw_only=True)
class JobFilter:
    """Which jobs a listing shows: each field given narrows it (all of them must match)."""

    state: str | None = attrs.field(default=None, validator=_opt_state)
    pool: str | None = attrs.field(default=None, validator=_opt_id)
    principal: str | None = attrs.field(default=None, validator=_opt_id)
    node: str | None = attrs.field(default=None, validator=_opt_id)
    since: int | None = attrs.field(default=None, validator=_opt_ms)
    until: int | None = attrs.field(default=None, validator=_until)
    limit: int = attrs.field(default=DEFAULT_JOB_PAGE, validator=_limit)
    cursor: str | None = attrs.field(default=None, validator=_opt_cursor)

    def position(self) -> Cursor | None:
        return parse_cursor(self.cursor) if self.cursor is not None else None
