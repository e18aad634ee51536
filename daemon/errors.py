"""Every exception schedd raises, in one tree.

::

    SchedError
    ├── StoreError                  something went wrong talking to Redis
    │   ├── StoreUnavailable        cannot reach Redis (refused, dropped, timed out)
    │   └── StoreResponseError      Redis answered with an error we do not map: the server
    │                               cannot serve now (``transient``), or a bug or misuse
    ├── ScriptError                 a Lua script refused the operation with a named code
    │   ├── NotFound
    │   │   ├── NodeNotFound        E_NO_NODE
    │   │   ├── JobNotFound         E_NO_JOB
    │   │   └── SessionNotFound     E_NO_SESSION (no ordered session of that name for the
    │   │                           principal)
    │   ├── Fenced                  the caller speaks for a stale registration or attempt
    │   │   ├── StaleEpoch          E_STALE_EPOCH   (node re-registered since)
    │   │   ├── StaleAttempt        E_STALE_ATTEMPT (not this node's current attempt)
    │   │   └── WrongOwner          E_WRONG_OWNER   (another instance owns the node's connection)
    │   ├── Refused
    │   │   ├── NoCapacity          E_NO_CAPACITY   (no free slot and queueing is off)
    │   │   ├── QueueFull           E_QUEUE_FULL
    │   │   ├── TooBig              E_TOO_BIG       (cost above every live node's capacity)
    │   │   ├── NotYours            E_NOT_YOURS     (principal does not own the job)
    │   │   ├── QuotaExceeded       E_QUOTA         (a quota of the principal; ``quota`` names it)
    │   │   ├── RateLimited         E_RATE_LIMITED  (the principal's submit rate; ``retry_after``)
    │   │   ├── DuplicateSeq        E_DUPLICATE_SEQ (the seq of the ordered session is taken)
    │   │   └── NotYourNode         E_IDENTITY      (the node id belongs to another principal)
    │   ├── InvalidState            E_BAD_STATE     (e.g. drain from a node taken offline)
    │   └── BadArgument             E_BAD_ARG
    │       ├── BadDelay            E_BAD_DELAY     (a job's wait goes past the allowed delay)
    │       └── BadTtl              E_BAD_TTL       (a result_ttl over the allowed one)
    ├── ConfigError                 sched.toml or environment overrides are invalid
    └── ProtocolError               a peer sent something the protocol does not allow

Script error replies have the form ``E_CODE human readable message``; :data:`SCRIPT_ERRORS` is the
one table mapping codes to classes, and :func:`error_from_reply` is the one boundary that does it.
"""

from __future__ import annotations

import re


class SchedError(Exception):
    """Root of every schedd error."""


class StoreError(SchedError):
    """Talking to Redis failed."""


class StoreUnavailable(StoreError):
    """Redis cannot be reached right now (connection refused, dropped, or a command timed out)."""


class StoreResponseError(StoreError):
    """Redis replied with an error that is not one of schedd's script codes.

    Either the server cannot serve right now (:attr:`transient`: loading, busy, out of memory,
    a replica, a cluster slot moving), or a command or script was given something it refused:
    a bug of schedd, never "the store is unavailable".
    """

    @property
    def transient(self) -> bool:
        """True when the reply says the server cannot serve now (:data:`TRANSIENT_REPLIES`)."""
        return str(self).split(" ", 1)[0].lstrip("-") in TRANSIENT_REPLIES


class ScriptError(SchedError):
    """A script refused the operation; ``code`` is the wire code (also used in protocol errors)."""

    code = "E_SCRIPT"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFound(ScriptError):
    code = "E_NOT_FOUND"


class NodeNotFound(NotFound):
    code = "E_NO_NODE"


class JobNotFound(NotFound):
    code = "E_NO_JOB"


class SessionNotFound(NotFound):
    code = "E_NO_SESSION"


class Fenced(ScriptError):
    code = "E_FENCED"


class StaleEpoch(Fenced):
    code = "E_STALE_EPOCH"


class StaleAttempt(Fenced):
    code = "E_STALE_ATTEMPT"


class WrongOwner(Fenced):
    code = "E_WRONG_OWNER"


class Refused(ScriptError):
    code = "E_REFUSED"


class NoCapacity(Refused):
    code = "E_NO_CAPACITY"


class QueueFull(Refused):
    code = "E_QUEUE_FULL"


class TooBig(Refused):
    code = "E_TOO_BIG"


class NotYours(Refused):
    code = "E_NOT_YOURS"


class DuplicateSeq(Refused):
    code = "E_DUPLICATE_SEQ"


class NotYourNode(Refused):
    code = "E_IDENTITY"


class QuotaExceeded(Refused):
    """A quota of the submitting principal: :attr:`quota` is its name (``max_queued``...), the
    first word of the message."""

    code = "E_QUOTA"

    @property
    def quota(self) -> str:
        return self.message.split(":", 1)[0]


_RETRY_AFTER_RE = re.compile(r"retry_after_ms=(\d+)")


class RateLimited(Refused):
    """The submitting principal is over its submit rate; :attr:`retry_after` is the seconds
    until its bucket holds a token again (the script says so at the end of the message)."""

    code = "E_RATE_LIMITED"

    @property
    def retry_after(self) -> float:
        found = _RETRY_AFTER_RE.search(self.message)
        return int(found.group(1)) / 1000 if found else 1.0


class InvalidState(ScriptError):
    code = "E_BAD_STATE"


class BadArgument(ScriptError):
    code = "E_BAD_ARG"


class BadDelay(BadArgument):
    code = "E_BAD_DELAY"


class BadTtl(BadArgument):
    code = "E_BAD_TTL"


class ConfigError(SchedError):
    """The configuration is invalid; ``errors`` holds one ``path: message`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ProtocolError(SchedError):
    """A peer broke the protocol; ``code`` is the error code sent back to it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


SCRIPT_ERRORS: dict[str, type[ScriptError]] = {
    cls.code: cls
    for cls in (
        NodeNotFound,
        JobNotFound,
        SessionNotFound,
        StaleEpoch,
        StaleAttempt,
        WrongOwner,
        NoCapacity,
        QueueFull,
        TooBig,
        NotYours,
        DuplicateSeq,
        NotYourNode,
        QuotaExceeded,
        RateLimited,
        InvalidState,
        BadArgument,
        BadDelay,
        BadTtl,
    )
}


TRANSIENT_REPLIES: frozenset[str] = frozenset(
    {"LOADING", "BUSY", "OOM", "READONLY", "MASTERDOWN", "NOREPLICAS", "TRYAGAIN",
     "CLUSTERDOWN", "MISCONF"}
)
"""Error prefixes with which a Redis server says it cannot serve the command now (it did not run
or changed nothing); the same command may succeed later."""


def error_from_reply(text: str) -> SchedError:
    """Map a Redis error reply to the most specific schedd exception.

    Redis prefixes script errors raised with ``error_reply`` unchanged, but wraps errors raised
    by ``error()`` (``ERR user_script:12: ...``); both forms are recognised.
    """
    stripped = text.strip()
    for word_index, word in enumerate(stripped.split(" ", 2)[:2]):
        cls = SCRIPT_ERRORS.get(word)
        if cls is not None:
            rest = stripped.split(" ", word_index + 1)[-1] if " " in stripped else ""
            return cls(rest)
    return StoreResponseError(stripped)
