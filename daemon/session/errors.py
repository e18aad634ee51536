"""How a failure while handling a peer's message is answered: exception -> wire error code.

``E_INTERNAL`` is the answer only to what is a bug (an exception nobody mapped, a script or
command the store refused as malformed); everything a peer can cause has its own code.
"""

from __future__ import annotations

import attrs

import schedd.protocol as p
from schedd.errors import (
    Fenced,
    NodeNotFound,
    ProtocolError,
    ScriptError,
    StoreError,
    StoreResponseError,
)
from schedd.session.base import log


@attrs.frozen
class Answer:
    """The ``error`` a failure gets, and what follows it."""

    code: str
    message: str
    #: breaks the protocol's rules: counts toward closing the connection (MAX_VIOLATIONS)
    violation: bool = False
    #: the connection ends after the error
    close: bool = False


def answer(exc: Exception, message: p.Message, role: str | None, peer: str,
           job_id: str | None) -> Answer:
    """The answer to ``exc``, raised while handling ``message`` of a ``role`` connection.
    Called in the ``except`` block (an unmapped exception is logged with its traceback)."""
    if isinstance(exc, ScriptError):
        # A job message about an attempt that is not this node's current one (older attempt,
        # job moved to another node, queued again or finished) is E_STALE_ATTEMPT as the script
        # says: the node drops that attempt. A node message refused because this connection no
        # longer speaks for its node (registered again elsewhere) ends the connection.
        return Answer(exc.code, exc.message, close=role == "node" and not job_id
                      and isinstance(exc, Fenced | NodeNotFound))
    if isinstance(exc, StoreError):
        if isinstance(exc, StoreResponseError) and not exc.transient:
            # a command or script refused what it was given: a bug, not an outage
            log.error("the store refused %s from %s %s: %s", message.TYPE, role, peer, exc)
            return _internal(message)
        log.warning("store unavailable while handling %s from %s: %s", message.TYPE, peer, exc)
        return Answer(p.E_UNAVAILABLE, "the store is unavailable, retry shortly")
    if isinstance(exc, ProtocolError):
        # breaking the protocol's rules counts toward a close; a refusal (a plugin said no to
        # an argument) is answered and the connection kept
        return Answer(exc.code, exc.message, violation=exc.code == p.E_ROLE)
    log.exception("internal error handling %s from %s %s", message.TYPE, role, peer)
    return _internal(message)


def _internal(message: p.Message) -> Answer:
    return Answer(p.E_INTERNAL, f"internal error handling {message.TYPE}; see the daemon's log")
