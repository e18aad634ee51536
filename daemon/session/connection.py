"""One connection, from ``hello`` to close: the protocol's rules on the daemon side.

Rules of this module:
  * A transport hands the core a :class:`~schedd.transport.Channel`; everything else (handshake,
    authentication, roles, limits, identity, routing) happens here, the same for every transport.
  * A connection speaks for one role. A node connection speaks only for the node id it
    registered, and only for jobs assigned to that node; a client connection sees and cancels
    only the jobs of its principal.
  * Messages of one connection are handled in order, one at a time; replies and deliveries leave
    through one bounded outbox drained by one sender task, so a slow peer cannot block the daemon
    (a peer whose outbox overflows is disconnected; deadlines move its work on).
  * Every malformed, unknown, unauthorised or over-limit message gets an ``error`` with a code;
    repeated violations close the connection; nothing a peer sends can crash the daemon.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import orjson
import trio

from schedd import admission
from schedd import protocol as p
from schedd.core import (
    AssignDelivery,
    CancelJob,
    Delivery,
    DoneDelivery,
    DrainNode,
    JobInfo,
    JobSpec,
    ProgressDelivery,
    new_id,
)
from schedd.errors import (
    Fenced,
    NodeNotFound,
    ProtocolError,
    ScriptError,
    StoreError,
    StoreResponseError,
)
from schedd.node_ids import node_id_allowed, refusal
from schedd.transport.channel import Channel, ChannelClosed

if TYPE_CHECKING:
    from schedd.app import App

log = logging.getLogger(__name__)

OUTBOX_SIZE = 4096
MAX_VIOLATIONS = 10
#: Most messages a session writes at once to a channel that can (``send_many``).
SEND_BATCH = 64


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


class Session:
    """The daemon's side of one connection."""

    def __init__(self, app: App, channel: Channel) -> None:
        self.app = app
        self.channel = channel
        self.peer = channel.peer
        self.role: str | None = None
        self.principal = ""
        self.name: str | None = None
        self.node_id: str | None = None
        self.epoch: int | None = None
        self.draining = False
        self.inflight: set[str] = set()  # jobs this client submitted and has no done for yet
        #: jobs whose progress and done this client receives (schedd.routes keeps it)
        self.following: set[str] = set()
        self.violations = 0
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](OUTBOX_SIZE)
        # The sender task waits with nothing queued and nothing of its own in flight: a message
        # posted now may be written at once by the poster (see post)
        self._sender_idle = False
        self._write_nowait: Callable[[bytes], bool] = channel.write_nowait
        self._cancel = trio.CancelScope()
        self.rate = RateLimiter(float(app.limits.max_messages_per_second))
        #: trio clock of the last message received; the app's idle sweep closes a session
        #: silent for longer than ``idle_timeout`` (one sweep, not a deadline per message)
        self.last_seen = trio.current_time()
        # submits whose script is running (a client's submits run concurrently, see
        # _receive_loop): their count, the ids they name, and an event set when none runs
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
        # a message taken from the channel ahead of its turn and handed back (see _accept): the
        # receiving loop handles it next
        self._next: bytes | str | None = None
        channel.set_inline(self._inline)
        channel.set_control(self._control_frame)
        #: the connection's admission (schedd.admission), told how the handshake ended
        self._ticket = admission.CURRENT.get()

    # -- outgoing ------------------------------------------------------------------------------

    def post(self, message: p.Message) -> None:
        """Send a message to this peer, in order; never blocks. Overflow disconnects the peer.

        While the sender task waits with nothing queued, the message is written here and now when
        the channel can (``write_nowait``: a plain socket, no send in progress): no trip through the
        queue and the sender's task, which cost a task switch per message and held an ``assign`` or
        a ``done`` for a scheduling round (docs/decisions/0013-write-by-poster.md). Anything else is
        queued for the sender, and from then on every message is until the sender has sent the queue
        and waits again, so the order holds. What a short write left waits for the sender, woken
        with an empty marker.
        """
        data = p.encode(message)
        if self._sender_idle and self._write_nowait(data):
            if not self.channel.write_pending:
                return
            data = b""  # the marker: the sender sends what the write left
        self._sender_idle = False
        try:
            self._out_send.send_nowait(data)
        except trio.WouldBlock:
            log.warning("%s %s is not reading; closing its connection", self.role, self.peer)
            self._cancel.cancel()
        except trio.ClosedResourceError:
            pass

    async def _sender(self) -> None:
        """Send what is posted and queued, in order: everything queued meanwhile goes to the
        channel's ``send_many`` at once (one write for TCP and WebSocket), up to SEND_BATCH
        messages."""
        send_many = self.channel.send_many
        out = self._out_recv
        while True:
            try:
                # idle only when nothing is queued: awaiting receive() on a queue that holds
                # something still yields once, and a direct write then would overtake it
                data = out.receive_nowait()
            except trio.WouldBlock:
                self._sender_idle = True
                try:
                    data = await out.receive()
                except trio.EndOfChannel:
                    return
                finally:
                    self._sender_idle = False
            except trio.EndOfChannel:
                return
            try:
                batch = [data] if data else []
                while len(batch) < SEND_BATCH:
                    try:
                        more = out.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    if more:
                        batch.append(more)
                await send_many(batch)  # also what a short write of post left, first
            except ChannelClosed:
                self._cancel.cancel()
                return

    def _error(
        self, code: str, message: str, *, ref: str | None = None, job_id: str | None = None
    ) -> None:
        self.post(p.Error(code=code, message=message, ref=ref, job_id=job_id))

    def _violation(self, code: str, message: str, ref: str | None = None) -> None:
        self.violations += 1
        self._error(code, message, ref=ref)
        if self.violations >= MAX_VIOLATIONS:
            log.warning("closing %s %s after %d protocol violations (last: %s %s)",
                        self.role or "peer", self.peer, self.violations, code, message)
            raise CloseConnection

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender)
                with self._cancel:  # cancels the receiving side: close() and overflow
                    try:
                        try:
                            await self._handshake()
                        except CloseConnection:  # refused, or no hello in time
                            self._handshake_ended(failed=self.app.accepting)
                            raise
                        finally:  # a welcome; or the peer left, or the daemon closes it
                            self._handshake_ended(failed=False)
                        await self._receive_loop()
                    except (CloseConnection, ChannelClosed):
                        pass
                # Let what is queued (the last error, a final done) go out, for a second at most.
                self._sender_idle = False  # and nothing more: later posts are dropped
                self._out_send.close()
                nursery.cancel_scope.deadline = trio.current_time() + 1.0
        finally:
            self.app.session_ended(self)
            with trio.CancelScope(shield=True):
                await self.channel.aclose()

    def _handshake_ended(self, *, failed: bool) -> None:
        """Tell the connection's admission (once; the first call counts)."""
        if self._ticket is not None:
            self._ticket.handshake_ended(trio.current_time(), failed=failed)

    def _control_frame(self) -> bool:
        """A WebSocket ping or pong arrived (``WebSocketChannel.set_control``): it counts
        toward the message rate as a message does; over the rate it is dropped (no pong) and
        counts as a violation. Runs on the task that read it: posts and closes, never raises."""
        if self.rate.allow(trio.current_time()):  # not a message: the idle clock runs on
            return True
        self.rate.rate = float(self.app.limits.max_messages_per_second)
        try:
            self._violation(p.E_RATE, f"more than {self.app.limits.max_messages_per_second} "
                            "messages per second (WebSocket control frames count)")
        except CloseConnection:
            self.close()
        return False

    def close(self) -> None:
        """End this connection after what is already queued for it."""
        self._cancel.cancel()

    def close_if_idle(self, now: float, idle_timeout: float) -> bool:
        """Close this connection if nothing arrived for ``idle_timeout`` seconds."""
        if now - self.last_seen <= idle_timeout:
            return False
        log.info("closing idle %s %s (nothing for %gs)", self.role, self.peer, idle_timeout)
        self.close()
        return True

    def speaks_for(self, node_id: str) -> bool:
        """Whether this connection holds the node's registration, or is registering it."""
        return node_id in (self.node_id, self._registering)

    def refuse_stale(self, why: str | None = None) -> None:
        """The node's registration is no longer current: say so (``E_STALE_EPOCH``, with
        ``why`` when given) and close (it will register again, here or elsewhere)."""
        node_id = self.node_id
        self.node_id = None  # no longer speaks for the node: no offline when it closes
        if node_id is not None:
            self.app.unbind_node(node_id, self)
        self._error("E_STALE_EPOCH", why or f"the registration of node {node_id} is no longer "
                    "current (it registered again elsewhere, or the store lost it); register "
                    "again")
        self.close()

    async def register_again(self) -> int:
        """Store this connection's registration again, in place, and tell the node its new epoch.

        For a registration the store lost or fenced while the node kept its connection (Redis
        flushed, restarted without persistence or failed over; the node taken offline while it
        kept beating). Same capacity, pools, capabilities and labels as the connection's
        ``register``. The node gets a ``registered`` that answers no request (``ref`` null)
        before any job the registration hands it. Returns the new epoch; raises
        ``LookupError`` when this connection no longer speaks for a node, and what
        ``Core.register_node`` raises.
        """
        node_id, m = self.node_id, self.registration
        if node_id is None or m is None or self.app.nodes.get(node_id) is not self:
            raise LookupError(f"{self.peer} speaks for no registered node")
        self._held = []
        try:
            reg = await self.app.core.register_node(
                node_id=node_id, capacity=m.capacity, pools=self.pools,
                capabilities_json=orjson.dumps(m.capabilities).decode(),
                labels_json=orjson.dumps(m.labels).decode(), principal=self.principal,
            )
        except BaseException:
            held, self._held = self._held or [], None
            for delivery in held:
                self.deliver(delivery)
            raise
        held, self._held = self._held or [], None
        if self.node_id == node_id:  # not replaced by a new connection of the node meanwhile
            self.epoch, self.pools = reg.epoch, list(reg.pools)
            self.post(p.Registered(node_id=node_id, epoch=reg.epoch, pools=list(reg.pools)))
        for delivery in held:
            self.deliver(delivery)
        if self.node_id == node_id:
            self.app.plugins.node_registered(node_id, reg.epoch, list(reg.pools),
                                             self.app.instance)
        return reg.epoch

    async def _receive(self) -> bytes | str:
        raw = self._next
        if raw is not None:
            self._next = None
            return raw
        try:
            return await self.channel.receive()
        except ProtocolError as exc:  # the transport refused a frame (too large, malformed)
            self._error(exc.code, exc.message)
            raise CloseConnection from None

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
        self.app.session_started(self)
        self.post(p.Welcome(instance=self.app.instance, version=p.PROTOCOL_VERSION,
                            heartbeat_interval=self.app.config.nodes.heartbeat_interval,
                            principal=principal, ref=hello.ref))
        log.debug("%s %s connected as %s", self.role, self.peer, principal)

    async def _receive_loop(self) -> None:
        """Read and handle messages until the peer goes.

        A client's ``submit`` runs concurrently with the messages after it: each waits for its own
        ``job_submit`` round trip, and handled one at a time they capped a connection at one submit
        per round trip (docs/decisions/0006-concurrent-submits.md). Any other message (``ping``
        included) first waits until every earlier submit has finished, so it sees their effects (a
        ``cancel`` or ``follow`` right after the ``submit`` of the same job); a ``submit`` naming a
        job id already being submitted waits too. Replies to consecutive submits may come in a
        different order (they carry ``ref`` and ``job_id``); docs/protocol.md, "Order". When the
        peer closes, submits already read still finish.
        """
        rate = self.rate
        async with trio.open_nursery() as submits:
            try:
                while True:
                    raw = await self._receive()
                    self.last_seen = now = trio.current_time()
                    if not rate.allow(now):
                        rate.rate = float(self.app.limits.max_messages_per_second)
                        self._violation(p.E_RATE, "more than "
                                        f"{self.app.limits.max_messages_per_second} "
                                        "messages per second")
                        continue
                    if self._beat is not None and raw == self._beat_raw:
                        message: p.Message = self._beat
                    else:
                        try:
                            message = p.decode(raw)
                        except ProtocolError as exc:
                            self._violation(exc.code, exc.message)
                            continue
                        if isinstance(message, p.Heartbeat):
                            self._beat_raw, self._beat = raw, message
                    if isinstance(message, p.Submit) and self.role == "client":
                        if message.job_id is not None and message.job_id in self._submitting:
                            await self._submits_idle.wait()
                        self._submit_started(message.job_id)
                        submits.start_soon(self._concurrent_submit, message)
                        continue
                    if self._submits:  # a ping too: its pong confirms the submits before it
                        await self._submits_idle.wait()
                    await self._handle(message)
            except (CloseConnection, ChannelClosed):
                pass  # submits already read finish (the nursery waits for them)

    def _submit_started(self, job_id: str | None) -> None:
        if self._submits == 0:
            self._submits_idle = trio.Event()
        self._submits += 1
        if job_id is not None:
            self._submitting.add(job_id)

    async def _concurrent_submit(self, message: p.Submit) -> None:
        try:
            await self._handle(message)
        except (CloseConnection, ChannelClosed):
            self.close()  # as the reading loop would have ended: after what is queued
        finally:
            if message.job_id is not None:
                self._submitting.discard(message.job_id)
            self._submits -= 1
            if self._submits == 0:
                self._submits_idle.set()

    # -- dispatch ------------------------------------------------------------------------------

    async def _handle(self, message: p.Message) -> None:
        if isinstance(message, p.Ping):
            self.post(p.Pong(ref=message.ref))
            return
        if isinstance(message, p.Pong):
            return
        allowed = p.NODE_SENDS if self.role == "node" else p.CLIENT_SENDS
        handler = _HANDLERS.get((self.role or "", message.TYPE))
        if message.TYPE not in allowed or handler is None:
            self._violation(p.E_ROLE, f"a {self.role} may not send {message.TYPE}", message.ref)
            return
        job_id = getattr(message, "job_id", None)
        try:
            await handler(self, message)
        except ScriptError as exc:
            self._script_error(exc, message, job_id)
        except StoreError as exc:
            if isinstance(exc, StoreResponseError) and not exc.transient:
                # a command or script refused what it was given: a bug, not an outage
                log.error("the store refused %s from %s %s: %s", message.TYPE, self.role,
                          self.peer, exc)
                self._error(p.E_INTERNAL, f"internal error handling {message.TYPE}; see the "
                            "daemon's log", ref=message.ref, job_id=job_id)
                return
            log.warning("store unavailable while handling %s from %s: %s",
                        message.TYPE, self.peer, exc)
            self._error(p.E_UNAVAILABLE, "the store is unavailable, retry shortly",
                        ref=message.ref, job_id=job_id)
        except ProtocolError as exc:
            if exc.code == p.E_ROLE:  # breaking the protocol's rules counts toward a close
                self._violation(exc.code, exc.message, message.ref)
            else:  # a refusal (a plugin said no to an argument): answer, keep the connection
                self._error(exc.code, exc.message, ref=message.ref, job_id=job_id)
        except (CloseConnection, ChannelClosed):
            raise
        except Exception:
            log.exception("internal error handling %s from %s %s", message.TYPE, self.role,
                          self.peer)
            self._error(p.E_INTERNAL, f"internal error handling {message.TYPE}; see the "
                        "daemon's log", ref=message.ref, job_id=job_id)

    def _script_error(
        self, exc: ScriptError, message: p.Message, job_id: str | None
    ) -> None:
        # A job message about an attempt that is not this node's current one (older attempt,
        # job moved to another node, queued again or finished) is E_STALE_ATTEMPT as the script
        # says: the node drops that attempt.
        self._error(exc.code, exc.message, ref=message.ref, job_id=job_id)
        if self.role == "node" and isinstance(exc, Fenced | NodeNotFound) and not job_id:
            # this connection no longer speaks for its node (re-registered elsewhere)
            raise CloseConnection

    # -- node messages -------------------------------------------------------------------------

    def _need_registered(self, message: p.Message) -> tuple[str, int]:
        if self.node_id is None or self.epoch is None:
            raise ProtocolError(p.E_ROLE, f"register before sending {message.TYPE}")
        return self.node_id, self.epoch

    async def _register(self, m: p.Register) -> None:
        if self.node_id is not None:
            if m.node_id is not None and m.node_id != self.node_id:
                self._error(p.E_IDENTITY, f"this connection speaks for node {self.node_id}, "
                            f"not {m.node_id}", ref=m.ref)
                return
            raise ProtocolError(p.E_ROLE, "register is allowed once per connection")
        node_id = m.node_id or new_id("node")
        self._check_node_id(node_id, chosen=m.node_id is None)
        pools = checked_pools(
            self.app.plugins.node_pools(node_id, dict(m.capabilities), list(m.pools)),
            f"node {node_id}")
        # Route the node here before the script runs (it may hand the node queued jobs at once),
        # but hold those deliveries until `registered` has gone out, so the node learns its epoch
        # first. A connection the node had here keeps its registration until the script has
        # accepted this one; if it refuses, what was held goes back to that connection.
        self._held, self._registering = [], node_id
        previous = self.app.bind_node(node_id, self)
        try:
            reg = await self.app.core.register_node(
                node_id=node_id, capacity=m.capacity, pools=pools,
                capabilities_json=orjson.dumps(m.capabilities).decode(),
                labels_json=orjson.dumps(m.labels).decode(), principal=self.principal,
            )
        except BaseException:
            self.app.unbind_node(node_id, self, restore=previous)
            held, self._held = self._held, None
            self.app.reroute(held)
            raise
        finally:
            self._registering = None
        if previous is not None:
            log.info("node %s registered again from %s; closing its old connection from %s",
                     node_id, self.peer, previous.peer)
            previous.refuse_stale(f"node {node_id} registered again on another connection "
                                  f"(epoch {reg.epoch}); this one no longer speaks for it")
        self.node_id, self.epoch = node_id, reg.epoch
        self.registration, self.pools = m, list(reg.pools)
        self.post(p.Registered(node_id=node_id, epoch=reg.epoch, pools=list(reg.pools), ref=m.ref))
        held, self._held = self._held, None
        for delivery in held:
            self.deliver(delivery)
        self.app.plugins.node_registered(node_id, reg.epoch, list(reg.pools), self.app.instance)

    def _check_node_id(self, node_id: str, *, chosen: bool) -> None:
        """Refuse (``E_IDENTITY``) a node id this connection's principal may not register: one
        ``[auth] node_id_patterns`` does not allow it, or one a connection of another principal
        holds here (the script refuses one held elsewhere). Nothing is touched before."""
        patterns = self.app.config.auth.node_id_patterns
        if not node_id_allowed(patterns, self.principal, node_id):
            raise ProtocolError(p.E_IDENTITY,
                                refusal(patterns, self.principal, node_id, chosen=chosen))
        holder = self.app.nodes.get(node_id)
        if holder is not None and holder is not self and holder.principal != self.principal:
            raise ProtocolError(p.E_IDENTITY,
                                f"node {node_id} is registered by another principal")

    async def _heartbeat(self, m: p.Heartbeat) -> None:
        node_id, epoch = self._need_registered(m)
        if m.capabilities is not None and self.registration is not None \
                and m.capabilities != self.registration.capabilities:
            await self._capabilities_changed(node_id, m.capabilities)
            epoch = self.epoch or epoch
        self._record_beat(node_id, epoch, m)

    def _record_beat(self, node_id: str, epoch: int, m: p.Heartbeat) -> None:
        self.running_seen = [*self.running_seen[-1:], list(m.running)]
        load = m.load if math.isfinite(m.load) else 0.0
        self.app.batcher.beat(node_id, epoch, load, m.inflight)

    def _inline(self, raw: bytes | str) -> bool:
        """A frame that arrived while the receiving loop waits, offered by the channel from the
        readiness hub's task (``StreamChannel.set_inline``): handled here, without waking the
        loop, when it is the node's previous heartbeat again (its steady state) and needs
        nothing the loop does beyond what :meth:`_receive_loop` would do for it. Anything else
        (``False``) goes to the loop.
        """
        beat = self._beat
        if beat is None or raw != self._beat_raw or self.node_id is None or self.epoch is None:
            return False
        caps = beat.capabilities
        if caps is not None and (self.registration is None
                                 or caps != self.registration.capabilities):
            return False  # the loop moves the node's pools
        now = trio.current_time()
        if not self.rate.allow(now):
            return False  # the loop says why
        self.last_seen = now
        self._record_beat(self.node_id, self.epoch, beat)
        return True

    async def _capabilities_changed(self, node_id: str, capabilities: dict[str, Any]) -> None:
        """A heartbeat brought new capabilities: move the node's pools in one script."""
        assert self.registration is not None
        registration = attrs.evolve(self.registration, capabilities=capabilities, node_id=node_id)
        pools = checked_pools(
            self.app.plugins.node_pools(node_id, dict(capabilities), list(registration.pools)),
            f"node {node_id}")
        self.registration = registration
        if pools == self.pools:
            return  # nothing the pools depend on changed
        self.pools = pools
        epoch = await self.register_again()
        log.info("node %s capabilities changed: pools now %s (epoch %s)", node_id, pools, epoch)

    async def _accept(self, m: p.Accept) -> None:
        """Record the accept; when the attempt's ``result`` arrived with it (a job that took no
        time: the node sent both in one write), record both in one script call.

        Two calls cost a second round trip to Redis before the client's ``done``, and a second
        script run (docs/decisions/0012-accept-and-result-in-one-call.md). If the joint call
        fails, the accept is answered as its own call would have been, and the result is handled
        next, alone, as if nothing had been tried (the script fences before it writes, so a
        refused call changed nothing).
        """
        node_id, _ = self._need_registered(m)
        behind = self._result_behind(m)
        if behind is None:
            await self.app.core.accept(m.job_id, node_id=node_id, attempt=m.attempt)
            return
        raw, result = behind
        try:
            await self._record_result(node_id, result, accepted=True)
        except Exception:
            self._next = raw
            raise

    def _result_behind(self, accept: p.Accept) -> tuple[bytes | str, p.Result] | None:
        """The next message if it already arrived (no wait) and is the ``result`` of the
        accepted attempt, within the rate limit; anything else is handed back to the loop."""
        raw: bytes | str | None = self.channel.receive_nowait()
        if raw is None:
            return None
        try:
            message = p.decode(raw)
        except ProtocolError:
            message = None  # the loop says why
        now = trio.current_time()
        if isinstance(message, p.Result) and message.job_id == accept.job_id \
                and message.attempt == accept.attempt and self.rate.allow(now):
            self.last_seen = now
            return raw, message
        self._next = raw
        return None

    async def _reject(self, m: p.Reject) -> None:
        node_id, _ = self._need_registered(m)
        await self.app.core.reject(m.job_id, node_id=node_id, attempt=m.attempt,
                                   reason=m.reason or "rejected")

    async def _progress(self, m: p.Progress) -> None:
        node_id, _ = self._need_registered(m)
        await self.app.core.progress(m.job_id, node_id=node_id, attempt=m.attempt,
                                     data_json=orjson.dumps(m.data).decode())

    async def _result(self, m: p.Result) -> None:
        node_id, _ = self._need_registered(m)
        await self._record_result(node_id, m)

    async def _record_result(self, node_id: str, m: p.Result, *, accepted: bool = False) -> None:
        error = {"code": m.error.code, "message": m.error.message} if m.error else None
        await self.app.core.result(
            m.job_id, node_id=node_id, attempt=m.attempt, ok=m.ok,
            output_json=orjson.dumps(m.output).decode(), error=error, accepted=accepted,
        )

    async def _unavailable(self, m: p.Unavailable) -> None:
        node_id, epoch = self._need_registered(m)
        await self.app.core.mark_unavailable(node_id, epoch=epoch, service=m.service, ttl=m.ttl)

    async def _node_drain(self, m: p.Drain) -> None:
        node_id, epoch = self._need_registered(m)
        self.draining = True
        await self.app.core.drain_node(node_id, epoch=epoch, reason=m.reason or "requested by node")
        self.post(p.Drain(reason=m.reason or "requested by node", ref=m.ref))

    # -- client messages -----------------------------------------------------------------------

    async def _submit(self, m: p.Submit) -> None:
        if not self.app.accepting:
            self._error(p.E_SHUTTING_DOWN, "this daemon is shutting down; submit to another "
                        "instance", ref=m.ref, job_id=m.job_id)
            return
        limit = self.app.limits.max_inflight_submits
        if len(self.inflight) >= limit:
            self._error(p.E_INFLIGHT, f"{limit} submits of this connection are still unfinished",
                        ref=m.ref, job_id=m.job_id)
            return
        job_id = m.job_id or new_id("job")
        pools = checked_pools(
            self.app.plugins.job_pools(job_id, dict(m.requirements), list(m.pools)),
            f"job {job_id}")
        if not pools:
            self._error("E_BAD_ARG", "the job names no candidate pool: give pools, or "
                        "requirements that an enabled plugin maps to pools", ref=m.ref,
                        job_id=job_id)
            return
        spec = JobSpec(
            pools=tuple(pools), payload_json=orjson.dumps(m.payload).decode(), job_id=job_id,
            session_id=m.session_id, priority=m.priority, services=tuple(m.services),
            ack_timeout=m.ack_timeout, run_timeout=m.run_timeout, queue_timeout=m.queue_timeout,
            max_attempts=m.max_attempts,
        )
        # A candidate while the script runs: a done delivered meanwhile waits for the reply
        candidate = self.app.routes.expect(job_id, self)
        self.inflight.add(job_id)
        try:
            sub = await self.app.core.submit(spec, principal=self.principal)
        except BaseException:
            self.inflight.discard(job_id)
            self.app.routes.settle(job_id, candidate, None)
            raise
        self.post(p.Accepted(job_id=job_id, state=sub.state,  # type: ignore[arg-type]
                             duplicate=sub.duplicate, ref=m.ref))
        self.app.routes.settle(job_id, candidate, sub.follows, sub.done)

    async def _cancel_job(self, m: p.Cancel) -> None:
        await self.app.core.cancel(m.job_id, principal=self.principal,
                                   reason=f"canceled by client {self.name or self.principal}")

    async def _status(self, m: p.Status) -> None:
        info = await self.app.queries.job(m.job_id)
        if info is None:
            self._error("E_NO_JOB", f"job {m.job_id} does not exist (or its retention ended)",
                        ref=m.ref, job_id=m.job_id)
            return
        if info.principal != self.principal:
            self._error("E_NOT_YOURS", f"job {m.job_id} belongs to another client", ref=m.ref,
                        job_id=m.job_id)
            return
        self.post(_job_reply(info, m.ref))

    async def _follow(self, m: p.Follow) -> None:
        # A candidate while the scripts run: it takes the job's deliveries only once the store
        # said the job is its principal's (schedd.routes)
        candidate = self.app.routes.expect(m.job_id, self)
        try:
            followed = await self.app.core.follow(m.job_id, principal=self.principal)
            try:
                info = await self.app.queries.job(m.job_id)
            except StoreError:
                info = None  # the follow holds: the reply says what its script said
        except BaseException:
            self.app.routes.settle(m.job_id, candidate, None)
            raise
        if info is not None and info.principal == self.principal:
            self.post(_job_reply(info, m.ref))  # the job as status shows it, node and info too
        else:  # its retention ended between the two reads, or the read failed
            self.post(p.Job(job_id=m.job_id, state=followed.state,  # type: ignore[arg-type]
                            attempt=followed.attempt, ref=m.ref))
        self.app.routes.settle(m.job_id, candidate, followed.follows, followed.done)

    async def _query(self, m: p.Query) -> None:
        data = await self.app.answer(m.what)
        self.post(p.Answer(what=m.what, data=data, ref=m.ref))

    # -- deliveries from the core --------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        if self._held is not None:
            self._held.append(delivery)
            return
        if isinstance(delivery, AssignDelivery):
            self.post(p.Assign(job_id=delivery.job_id, attempt=delivery.attempt,
                               deadline=delivery.deadline_ms, session_id=delivery.session_id,
                               payload=orjson.Fragment(delivery.payload_json)))
        elif isinstance(delivery, CancelJob):
            self.post(p.Cancel(job_id=delivery.job_id, attempt=delivery.attempt))
        elif isinstance(delivery, DrainNode):
            if not self.draining:
                self.draining = True
                self.post(p.Drain(reason=delivery.reason or None))
        elif isinstance(delivery, ProgressDelivery):
            self.post(p.Progress(job_id=delivery.job_id, attempt=delivery.attempt,
                                 data=orjson.Fragment(delivery.data_json)))
        elif isinstance(delivery, DoneDelivery):
            self.deliver_done(delivery)

    def detached(self, job_id: str) -> None:
        """Another connection of this principal followed the job: its deliveries go there."""
        self.inflight.discard(job_id)
        self._error(p.E_DETACHED, f"job {job_id} is now followed by another connection; its "
                    "progress and done go there (send follow to take it back)", job_id=job_id)

    def deliver_done(self, done: DoneDelivery) -> None:
        self.inflight.discard(done.job_id)
        error = None
        if done.error:
            error = p.ErrorInfo(code=str(done.error.get("code") or "E_FAILED"),
                                message=str(done.error.get("message") or ""))
        elif not done.ok:
            error = p.ErrorInfo(code="E_FAILED", message=f"job ended {done.state}")
        self.post(p.Done(
            job_id=done.job_id, state=done.state, ok=done.ok and done.state == "done",  # type: ignore[arg-type]
            output=orjson.Fragment(done.output_json) if done.output_json else None,
            error=error if done.state != "done" else None, node=done.node,
            attempts=done.attempts, timings={k: v for k, v in done.timings.items() if v},
        ))


def _job_reply(info: JobInfo, ref: str | None) -> p.Job:
    """The ``job`` message that answers ``status`` and ``follow``."""
    return p.Job(job_id=info.job_id, state=info.state, attempt=info.attempt,  # type: ignore[arg-type]
                 node=info.node, ref=ref, info={
                     "pools": info.pools, "priority": info.priority,
                     "max_attempts": info.max_attempts, "reason": info.reason,
                     "timings": info.timings, "tried": info.tried,
                 })


_HANDLERS: dict[tuple[str, str], Any] = {
    ("node", "register"): Session._register,
    ("node", "heartbeat"): Session._heartbeat,
    ("node", "accept"): Session._accept,
    ("node", "reject"): Session._reject,
    ("node", "progress"): Session._progress,
    ("node", "result"): Session._result,
    ("node", "unavailable"): Session._unavailable,
    ("node", "drain"): Session._node_drain,
    ("client", "submit"): Session._submit,
    ("client", "cancel"): Session._cancel_job,
    ("client", "status"): Session._status,
    ("client", "follow"): Session._follow,
    ("client", "query"): Session._query,
}
