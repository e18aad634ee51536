"""W3C Trace Context (https://www.w3.org/TR/trace-context/): the ``traceparent`` and
``tracestate`` a job carries from its client to its node and back.

Rules of this module:

- A ``traceparent`` is ``version-traceid-parentid-flags`` in lowercase hex: version ``00`` is
  exactly 55 characters; a later version (not ``ff``) may append ``-`` and more, which is kept
  as it is. Neither id may be all zeros.
- A ``tracestate`` is at most 32 comma-separated ``key=value`` members of at most
  :data:`MAX_TRACESTATE_LEN` characters in all, keys and values as the recommendation's grammar
  says; empty members (``a=1,,b=2``) are allowed, as the recommendation allows them.
- A job without a ``traceparent`` gets one the daemon makes (:func:`new_traceparent`): a random
  trace id and parent id, sampled, so a tracer that follows its parent's decision records it.
- The store keeps both as one text (:func:`join_trace`, :func:`split_trace`): the traceparent,
  then a space and the tracestate when there is one (a traceparent has no space).

This module imports no I/O library.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

__all__ = [
    "MAX_TRACEPARENT_LEN",
    "MAX_TRACESTATE_LEN",
    "join_trace",
    "new_traceparent",
    "split_trace",
    "trace_id",
    "traceparent_problem",
    "tracestate_problem",
]

MAX_TRACEPARENT_LEN: Final = 200
"""Longest traceparent accepted (a later version's extra fields included)."""
MAX_TRACESTATE_LEN: Final = 512
"""Longest tracestate accepted: what the recommendation asks every vendor to propagate."""
_MAX_MEMBERS: Final = 32

_TRACEPARENT: Final = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?"
)
_KEY: Final = re.compile(
    r"[a-z][_0-9a-z\-*/]{0,255}"
    r"|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13}"
)
_VALUE: Final = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def traceparent_problem(value: str) -> str | None:
    """What makes ``value`` not a traceparent, or ``None`` when it is one."""
    if len(value) > MAX_TRACEPARENT_LEN:
        return f"must be at most {MAX_TRACEPARENT_LEN} characters"
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return ("must be a W3C traceparent: 'version-traceid-parentid-flags' in lowercase hex, "
                "e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    version, trace, parent, _flags, rest = match.groups()
    if version == "ff":
        return "version ff is invalid"
    if version == "00" and rest is not None:
        return "version 00 has exactly four fields"
    if trace == "0" * 32:
        return "the trace id must not be all zeros"
    if parent == "0" * 16:
        return "the parent id must not be all zeros"
    return None


def tracestate_problem(value: str) -> str | None:
    """What makes ``value`` not a tracestate, or ``None`` when it is one."""
    if len(value) > MAX_TRACESTATE_LEN:
        return f"must be at most {MAX_TRACESTATE_LEN} characters"
    members = [m.strip(" \t") for m in value.split(",")]
    if sum(1 for m in members if m) > _MAX_MEMBERS:
        return f"must have at most {_MAX_MEMBERS} members"
    for member in members:
        if not member:
            continue
        key, eq, val = member.partition("=")
        if not eq or _KEY.fullmatch(key) is None or _VALUE.fullmatch(val) is None:
            shown = member if len(member) <= 40 else member[:37] + "..."
            return f"member {shown!r} is not a W3C tracestate 'key=value'"
    return None


def new_traceparent() -> str:
    """A new traceparent: version 00, random trace and parent ids, sampled."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str) -> str:
    """The trace id (32 hex digits) of a valid traceparent."""
    return traceparent[3:35]


def join_trace(traceparent: str, tracestate: str | None) -> str:
    """Both as the one text the store keeps."""
    return f"{traceparent} {tracestate}" if tracestate else traceparent


def split_trace(text: str) -> tuple[str | None, str | None]:
    """``(traceparent, tracestate)`` from the store's text; ``(None, None)`` for ``''`` (a job
    stored without one)."""
    if not text:
        return None, None
    traceparent, _, tracestate = text.partition(" ")
    return traceparent, tracestate or None
