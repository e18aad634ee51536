"""What every part of a session shares: its state, its limits, and how it answers a peer.

The session is one object (:class:`schedd.session.Session`) assembled from one class per
concern (handshake, node role, client role) over this base; each part reads and changes only
the session's own state, and reaches the instance through ``app``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

import schedd.admission as admission
import schedd.protocol as p
from schedd.core import Delivery
from schedd.errors import ProtocolError
from schedd.protocol.attachments import Collector
from schedd.session.outbox import Outbox
from schedd.transport.channel import Channel

if TYPE_CHECKING:
    from schedd.config import Config, LimitsSection
    from schedd.core import Core, HeartbeatBatcher, Queries
    from schedd.operators import Operators
    from schedd.plugin_manager import PluginManager
    from schedd.routes import Router, Routes

#: one logger for every part of a connection (docs/operations.md names it)
log = logging.getLogger("schedd.session")

MAX_VIOLATIONS = 10


def log_job(trace: str, message: str, *args: object) -> None:
    """The flow log: one debug line about a job, ending ``trace=<trace id>`` (``trace=-`` for
    a job stored without one), so that a job's lines on every instance share one search term.
    Nothing is built unless debug is on (these lines are per job, on the hot path)."""
    if log.isEnabledFor(logging.DEBUG):
        traceparent, _ = p.split_trace(trace)
        log.debug(message, *args, stacklevel=2,
                  extra={"trace": p.trace_id(traceparent) if traceparent else "-"})


def checked_pools(pools: list[str], whose: str) -> list[str]:
    """Pool keys from a decision hook must fit the protocol (they go back in ``registered``)."""
    if len(pools) > p.MAX_LIST:
        raise ProtocolError("E_BAD_ARG", f"{whose} maps to {len(pools)} pools; at most "
                            f"{p.MAX_LIST} are allowed")
    for pool in pools:
        if not isinstance(pool, str) or not pool or len(pool) > p.MAX_ID_LEN \
                or not pool.isprintable():
            raise ProtocolError("E_BAD_ARG", f"{whose} maps to an invalid pool key {pool!r}")
    return pools


class CloseConnection(Exception):
    """Raised inside a session to end it after the error already sent."""


@attrs.define
class RateLimiter:
    """Token bucket: ``rate`` messages per second with a burst of one second's worth."""

    rate: float
    tokens: float = 0.0
    stamp: float = 0.0

    def allow(self, now: float) -> bool:
        if self.stamp == 0.0:
            self.tokens, self.stamp = self.rate, now
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Host(Protocol):
    """What a session uses of the instance it belongs to (schedd.app.App is the one)."""

    accepting: bool
    limits: LimitsSection
    config: Config
    instance: str
    plugins: PluginManager
    core: Core
    queries: Queries
    operators: Operators
    batcher: HeartbeatBatcher
    #: where each delivery goes: the node's connection, the job's follower
    router: Router[Any]
    routes: Routes[Any]

    @property
    def nodes(self) -> Mapping[str, SessionBase]:
        """Which local connection speaks for each node (the router's table, read only here)."""

    def session_started(self, session: Any) -> None: ...

    def session_ended(self, session: Any) -> None: ...


class SessionBase:
    """The daemon's side of one connection: its state and the helpers every part uses."""

    #: send a message to this peer, in order, never blocking (the outbox's own method: no
    #: indirection on the hot path)
    post: Callable[[p.Message], None]

    def __init__(self, app: Host, channel: Channel) -> None:
        self.app = app
        self.channel = channel
        self.peer = channel.peer
        self.role: str | None = None
        self.principal = ""
        self.name: str | None = None
        #: the protocol version the peer's ``hello`` spoke (0 before it)
        self.protocol = 0
        #: this connection's entry in the clients view (``Core.client_open``), once listed
        self.listed: str | None = None
        #: the hello's token is an admin token: the client may run operator actions
        self.admin = False
        self.node_id: str | None = None
        self.epoch: int | None = None
        self.draining = False
        self.inflight: set[str] = set()  # jobs this client submitted and has no done for yet
        #: jobs whose progress and done this client receives (schedd.routes keeps it)
        self.following: set[str] = set()
        #: ordered sessions of its principal whose results this client receives (schedd.routes)
        self.sessions: set[str] = set()
        #: node: the trace context of each job assigned through this connection and not yet
        #: ended here, for the flow log (bounded: cleared at MAX_RUNNING entries, which only
        #: costs a later line its trace id)
        self.traces: dict[str, str] = {}
        self.violations = 0
        self._cancel = trio.CancelScope()
        self.outbox = Outbox(channel, self._cancel, self._overflow)
        self.post = self.outbox.post
        self.rate = RateLimiter(float(app.limits.max_messages_per_second))
        #: trio clock of the last message received; the app's idle sweep closes a session
        #: silent for longer than ``idle_timeout`` (one sweep, not a deadline per message)
        self.last_seen = trio.current_time()
        # submits whose script is running (a client's submits run concurrently, see
        # Session._receive_loop): their count, the ids they name, and an event set when none runs
        self._submits = 0
        self._submitting: set[str] = set()
        self._submits_idle = trio.Event()
        self._submits_idle.set()
        self._held: list[Delivery] | None = None
        self._registering: str | None = None  # the node id of a register whose script runs
        # the node's last registration as this connection made it, and the job ids its last
        # heartbeats listed (newest last): for reconciliation
        self.registration: p.Register | None = None
        self.pools: list[str] = []
        self.running_seen: list[list[str]] = []
        # A node sends the same heartbeat bytes second after second while nothing changes:
        # the last one is decoded once (decoding is pure; Heartbeat is frozen and its handler
        # copies what it keeps): docs/decisions/0008-decode-identical-heartbeats-once.md.
        self._beat_raw: bytes | str = b""
        self._beat: p.Heartbeat | None = None
        # messages taken from the channel ahead of their turn and handed back (see
        # NodeRole._burst_behind): the receiving loop handles them next, first to last
        self._next: list[bytes | str] = []
        #: the messages of an array frame not yet handled (an element refused: its error)
        self._pending: deque[p.BatchElement | p.BatchItemError] = deque()
        #: the connection's admission (schedd.admission), told how the handshake ended
        self._ticket = admission.CURRENT.get()
        #: gathers the attachment frames that follow a declaring message
        self.collector = Collector(app.limits.max_attachment, app.limits.max_attachments)
        #: id(message) -> the attachments it declared, while it is being handled
        self.attached: dict[int, list[bytes]] = {}

    @property
    def session(self) -> SessionBase:
        """This connection as the instance routes to it (the assembled Session)."""
        return self

    def _overflow(self) -> None:
        log.warning("%s %s is not reading; closing its connection", self.role, self.peer)
        self._cancel.cancel()

    def _error(
        self, code: str, message: str, *, ref: str | None = None, job_id: str | None = None
    ) -> None:
        self.post(p.Error(code=code, message=message, ref=ref, job_id=job_id))

    def _violation(self, code: str, message: str, ref: str | None = None,
                   job_id: str | None = None) -> None:
        self.violations += 1
        self._error(code, message, ref=ref, job_id=job_id)
        if self.violations >= MAX_VIOLATIONS:
            log.warning("closing %s %s after %d protocol violations (last: %s %s)",
                        self.role or "peer", self.peer, self.violations, code, message)
            raise CloseConnection

    async def _receive(self) -> bytes | str:
        if self._next:
            return self._next.pop(0)
        try:
            return await self.channel.receive()
        except ProtocolError as exc:  # the transport refused a frame (too large, malformed)
            self._error(exc.code, exc.message)
            raise CloseConnection from None

    def close(self) -> None:
        """End this connection after what is already queued for it."""
        self._cancel.cancel()

    def deliver(self, delivery: Delivery) -> None:
        """Send a delivery of the core to this peer (Session.deliver)."""
        raise NotImplementedError

    async def _handle(self, message: p.Message) -> None:
        """Handle one message of the peer (Session._handle)."""
        raise NotImplementedError

    def _refused(self, message: p.Message, exc: Exception) -> None:
        """Answer a message whose handling failed with ``exc`` (Session._refused)."""
        raise NotImplementedError

    async def _list_client(self) -> None:
        """Enter this client connection in the clients view (ClientRole._list_client)."""
        raise NotImplementedError
