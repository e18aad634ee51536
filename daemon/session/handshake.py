"""The states of a connection, as a table: which message each state allows, and the handshake.

A connection starts in :data:`HELLO`, where only ``hello`` is allowed; a welcome moves it to
the role the hello named, for good. In a role state, :data:`HANDLERS` says which messages the
peer may send and which method of the session handles each (``ping`` and ``pong`` are allowed
in every role state and answered by the session itself); anything else is refused with
``E_ROLE`` and counts as a violation. A node's messages other than ``register`` also need its
registration (``E_ROLE``, "register before ...", until it has one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import trio

import schedd.protocol as p
from schedd.errors import ProtocolError
from schedd.session.base import CloseConnection, SessionBase, log

HELLO: Final = "hello"
NODE: Final = "node"
CLIENT: Final = "client"

#: state -> message type -> the name of the session's method that handles it
HANDLERS: Final[Mapping[str, Mapping[str, str]]] = {
    HELLO: {"hello": "_handshake"},
    NODE: {
        "register": "_register",
        "heartbeat": "_heartbeat",
        "accept": "_accept",
        "reject": "_reject",
        "progress": "_progress",
        "result": "_result",
        "unavailable": "_unavailable",
        "drain": "_node_drain",
    },
    CLIENT: {
        "submit": "_submit",
        "cancel": "_cancel_job",
        "status": "_status",
        "follow": "_follow",
        "follow_session": "_follow_session",
        "query": "_query",
        "admin": "_admin",
    },
}


class Handshake(SessionBase):
    """The :data:`HELLO` state: ``hello`` in, ``welcome`` (or an error and a close) out."""

    async def _handshake(self) -> None:
        limits = self.app.limits
        with trio.move_on_after(limits.handshake_timeout) as scope:
            raw = await self._receive()
        self.last_seen = trio.current_time()
        if scope.cancelled_caught:
            self._error(p.E_ROLE, f"no hello within {limits.handshake_timeout:g}s")
            raise CloseConnection
        try:
            hello = p.decode(raw)
        except ProtocolError as exc:
            self._error(exc.code, exc.message)
            raise CloseConnection from None
        if not isinstance(hello, p.Hello):
            self._error(p.E_ROLE, f"the first message must be hello, not {hello.TYPE}",
                        ref=hello.ref)
            raise CloseConnection
        if hello.version != p.PROTOCOL_VERSION:
            self._error(p.E_VERSION, f"protocol version {hello.version} is not supported "
                        f"(this daemon speaks {p.PROTOCOL_VERSION})", ref=hello.ref)
            raise CloseConnection
        if not self.app.accepting:
            self._error(p.E_SHUTTING_DOWN, "this daemon is shutting down; use another instance",
                        ref=hello.ref)
            raise CloseConnection
        try:
            principal = self.app.plugins.authenticate(hello.role, hello.token, self.peer)
        except ProtocolError as exc:
            self._error(exc.code, exc.message, ref=hello.ref)
            raise CloseConnection from None
        if principal is None:
            what = "no token" if hello.token is None else "a wrong token"
            log.warning("refused %s %s: %s", hello.role, self.peer, what)
            self._error(p.E_AUTH, f"{what} for role {hello.role}", ref=hello.ref)
            raise CloseConnection
        self.role, self.principal, self.name = hello.role, principal, hello.name
        self.protocol = hello.version
        self.admin = self.app.plugins.is_admin(hello.role, hello.token)
        self.app.session_started(self.session)
        max_batch = self.app.limits.max_batch if hello.batch else 0
        self.post(p.Welcome(instance=self.app.instance, version=p.PROTOCOL_VERSION,
                            heartbeat_interval=self.app.config.nodes.heartbeat_interval,
                            principal=principal, max_batch=max_batch, ref=hello.ref))
        self.outbox.pack = max_batch  # from now on: the peer said it reads array frames
        log.debug("%s %s connected as %s", self.role, self.peer, principal)
        if self.role == "client":
            await self._list_client()

    def _handshake_ended(self, *, failed: bool) -> None:
        """Tell the connection's admission (once; the first call counts)."""
        if self._ticket is not None:
            self._ticket.handshake_ended(trio.current_time(), failed=failed)
