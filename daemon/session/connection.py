"""One connection, from ``hello`` to close: the protocol's rules on the daemon side.

The session is one object assembled from one class per concern: the outbox
(schedd.session.outbox, composed), the handshake and the table of what each state allows
(schedd.session.handshake), the node role (schedd.session.node), the client role
(schedd.session.client); errors are mapped to wire codes in schedd.session.errors and core
deliveries to wire messages in schedd.session.deliveries. This module receives, dispatches
and delivers.

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

from typing import Any

import attrs
import orjson
import trio

import schedd.protocol as p
from schedd.core import AssignDelivery, CancelJob, Delivery, DoneDelivery, DrainNode
from schedd.errors import ProtocolError, StoreError
from schedd.protocol.attachments import AttachmentError, Blob
from schedd.session.base import (
    MAX_VIOLATIONS,
    CloseConnection,
    Host,
    RateLimiter,
    checked_pools,
    log,
    log_job,
)
from schedd.session.client import ClientRole
from schedd.session.deliveries import wire_message
from schedd.session.errors import answer
from schedd.session.handshake import HANDLERS, HELLO, Handshake
from schedd.session.node import NodeRole
from schedd.transport.channel import Channel, ChannelClosed

__all__ = [
    "MAX_VIOLATIONS", "CloseConnection", "Host", "RateLimiter", "Session", "checked_pools",
]


class Session(Handshake, NodeRole, ClientRole):
    """The daemon's side of one connection."""

    def __init__(self, app: Host, channel: Channel) -> None:
        super().__init__(app, channel)
        self._tasks: trio.Nursery | None = None
        # deliveries held while the attachments of one before them are read from the store
        self._fetching: list[Delivery] | None = None
        channel.set_inline(self._inline)
        channel.set_control(self._control_frame)

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._tasks = nursery
                nursery.start_soon(self.outbox.serve)
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
                self.outbox.close()  # and nothing more: later posts are dropped
                nursery.cancel_scope.deadline = trio.current_time() + 1.0
        finally:
            self.app.session_ended(self)
            await self._unlist_client()
            with trio.CancelScope(shield=True):
                await self.channel.aclose()

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

    def close_if_idle(self, now: float, idle_timeout: float) -> bool:
        """Close this connection if nothing arrived for ``idle_timeout`` seconds."""
        if now - self.last_seen <= idle_timeout:
            return False
        log.info("closing idle %s %s (nothing for %gs)", self.role, self.peer, idle_timeout)
        self.close()
        return True

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

        An array frame is handled as its messages, each as if it had come in a frame of its own
        (:meth:`_take`). A run of plain submits available now (the rest of an array, frames
        already read) is stored with one script call (:meth:`_gather`,
        docs/decisions/0025-batches.md).
        """
        async with trio.open_nursery() as submits:
            held: p.Message | None = None
            try:
                while True:
                    if held is not None:
                        message, held = held, None
                    else:
                        pending = self._pending
                        found = self._take(pending.popleft() if pending else await self._receive())
                        if found is None:
                            continue
                        message = found
                    if isinstance(message, p.Submit) and self.role == "client":
                        if message.job_id is not None and message.job_id in self._submitting:
                            await self._submits_idle.wait()
                        elif _plain(message):
                            run, held = self._gather(message, submits)
                            if len(run) > 1:
                                continue
                        self._submit_started(message.job_id)
                        submits.start_soon(self._concurrent_submit, message)
                        continue
                    if self._submits:  # a ping too: its pong confirms the submits before it
                        await self._submits_idle.wait()
                    await self._handle(message)
            except (CloseConnection, ChannelClosed):
                pass  # submits already read finish (the nursery waits for them)

    def _take(self, raw: bytes | str | p.BatchElement | p.BatchItemError) -> p.Message | None:
        """One frame, or one element of an array frame: the message to handle, or None (an
        array frame, whose elements are now pending; a violation answered; a message waiting
        for its attachment frames). Each message counts toward the message rate."""
        if isinstance(raw, bytes | str) and not isinstance(raw, Blob) \
                and not self.collector.waiting and p.is_batch(raw):
            try:
                self._pending.extend(p.split_batch(raw, self.app.limits.max_batch))
            except ProtocolError as exc:
                self._violation(exc.code, exc.message)
            return None
        self.last_seen = now = trio.current_time()
        rate = self.rate
        if not rate.allow(now):
            rate.rate = float(self.app.limits.max_messages_per_second)
            self._violation(p.E_RATE, f"more than {self.app.limits.max_messages_per_second} "
                            "messages per second")
            return None
        element: p.BatchElement | None = None
        frame: bytes | str
        if isinstance(raw, p.BatchElement):
            element, frame = raw, raw.data
        elif isinstance(raw, p.BatchItemError):
            self._violation(raw.code, raw.message, raw.ref, raw.job_id)
            return None
        else:
            frame = raw
        if self._beat is not None and frame == self._beat_raw:
            return self._beat
        message = self._attachment_frame(frame, element)
        if isinstance(message, p.Heartbeat):
            self._beat_raw, self._beat = frame, message
        return message

    def _gather(self, first: p.Submit, submits: trio.Nursery,
                ) -> tuple[list[p.Submit], p.Message | None]:
        """The run of plain submits that begins with ``first``: the ones available now (the
        rest of an array frame, frames already read), up to ``max_batch``, each naming a job
        id not yet in the run nor being submitted. A run of two or more is started here, as
        one ``Core.submit_many`` call; returns the run and the message after it (to handle
        next), if one was taken."""
        run = [first]
        ids = {first.job_id}
        after: p.Message | None = None
        limit = self.app.limits.max_batch
        try:
            while len(run) < limit:
                raw = self._read_now()
                if raw is None:
                    break
                found = self._take(raw)
                if found is None:
                    continue
                if isinstance(found, p.Submit) and _plain(found) and (
                        found.job_id is None
                        or (found.job_id not in ids and found.job_id not in self._submitting)):
                    run.append(found)
                    ids.add(found.job_id)
                    continue
                after = found
                break
        finally:  # also when the peer's violations close the connection: the run is stored
            if len(run) > 1:
                for message in run:
                    self._submit_started(message.job_id)
                submits.start_soon(self._submit_burst, run)
        return run, after

    def _read_now(self) -> bytes | str | p.BatchElement | p.BatchItemError | None:
        """The next frame or array element if it is at hand, without waiting."""
        if self._pending:
            return self._pending.popleft()
        if self._next:
            return self._next.pop(0)
        return self.channel.receive_nowait()

    def _attachment_frame(self, raw: bytes | str, element: p.BatchElement | None = None,
                          ) -> p.Message | None:
        """Decode what arrived: the message to handle now (the attachments it declared, if any,
        in ``attached``), or None: a violation answered, or a message waiting for its attachment
        frames (schedd.protocol.attachments). Raises CloseConnection after an ``E_ATTACHMENT``,
        or an ``E_TOO_LARGE`` the stream cannot recover from. ``element``: the array frame's
        element ``raw`` is, whose ``ref`` and ``job_id`` an error about it names."""
        collector = self.collector
        untagged = self.channel.untagged_blobs
        try:
            try:
                whole = collector.receive(raw, untagged_blobs=untagged, decode=p.decode)
            except AttachmentError:
                raise
            except ProtocolError as exc:
                if element is not None:  # the error names the array's element it refuses
                    self._violation(exc.code, exc.message, *element.names())
                    return None
                if untagged and isinstance(raw, bytes) and raw.lstrip()[:1] != b"{":
                    collector.add(raw)  # no message declared it: E_ATTACHMENT
                self._violation(exc.code, exc.message)
                return None
            if whole is None:
                return None
            message, data = whole
            if data:
                self.attached[id(message)] = data
            return message
        except AttachmentError as exc:
            # the refused message's ref and job, so that its sender knows which it was
            ref = getattr(collector.message, "ref", None)
            job_id = getattr(collector.message, "job_id", None)
            if not exc.close:
                self._violation(exc.code, exc.message, ref, job_id)
                return None
            log.warning("closing %s %s: %s %s", self.role or "peer", self.peer, exc.code,
                        exc.message)
            self._error(exc.code, exc.message, ref=ref, job_id=job_id)
            raise CloseConnection from None

    # -- dispatch ------------------------------------------------------------------------------

    async def _handle(self, message: p.Message) -> None:
        if isinstance(message, p.Ping):
            self.post(p.Pong(ref=message.ref))
            return
        if isinstance(message, p.Pong):
            return
        handler = _HANDLERS.get((self.role or HELLO, message.TYPE))
        if handler is None:
            self.attached.pop(id(message), None)
            self._violation(p.E_ROLE, f"a {self.role} may not send {message.TYPE}", message.ref)
            return
        try:
            await handler(self, message)
        except (CloseConnection, ChannelClosed):
            raise
        except Exception as exc:
            self._refused(message, exc)
        finally:
            self.attached.pop(id(message), None)

    def _refused(self, message: p.Message, exc: Exception) -> None:
        """Answer a message whose handling failed with ``exc`` (an unmapped exception is
        logged with its traceback when called in its ``except`` block)."""
        job_id = getattr(message, "job_id", None)
        reply = answer(exc, message, self.role, self.peer, job_id)
        if reply.violation:
            self._violation(reply.code, reply.message, message.ref)
            return
        self._error(reply.code, reply.message, ref=message.ref, job_id=job_id)
        if reply.close:
            raise CloseConnection from None

    # -- deliveries from the core --------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        if self._held is not None:
            self._held.append(delivery)
            return
        if self._fetching is not None:
            self._fetching.append(delivery)
            return
        if isinstance(delivery, AssignDelivery):
            if len(self.traces) >= p.MAX_RUNNING:
                self.traces.clear()
            self.traces[delivery.job_id] = delivery.trace
            log_job(delivery.trace, "job %s attempt %s assigned to node %s", delivery.job_id,
                    delivery.attempt, delivery.node_id)
        elif isinstance(delivery, DoneDelivery):
            self.inflight.discard(delivery.job_id)
            log_job(delivery.trace, "job %s %s after %s attempt(s): done sent to %s",
                    delivery.job_id, delivery.state, delivery.attempts, self.principal)
        elif isinstance(delivery, CancelJob):
            log_job(self.traces.pop(delivery.job_id, ""), "job %s attempt %s canceled on node "
                    "%s: %s", delivery.job_id, delivery.attempt, delivery.node_id,
                    delivery.reason)
        elif isinstance(delivery, DrainNode):
            if delivery.lifted:
                self.draining = False
            elif self.draining:
                return
            else:
                self.draining = True
        message = wire_message(delivery)
        if message is not None:
            if isinstance(delivery, AssignDelivery | DoneDelivery) and delivery.attachments_json \
                    and isinstance(message, p.Assign | p.Done):
                self.post_with_attachments(message, delivery)
            else:
                self.post(message)

    def post_with_attachments(self, message: p.Assign | p.Done,
                              delivery: AssignDelivery | DoneDelivery) -> None:
        """Send an ``assign`` or ``done`` with the attachments it names, read from the store;
        the deliveries that come meanwhile wait, so they keep their order."""
        specs = [p.Attachment(**spec) for spec in orjson.loads(delivery.attachments_json)]
        message = attrs.evolve(message, attachments=specs)
        side = "in" if isinstance(delivery, AssignDelivery) else "out"
        self._fetching = []
        try:
            assert self._tasks is not None
            self._tasks.start_soon(self._send_attached, message, delivery.job_id, side,
                                   [spec.name for spec in specs])
        except (AssertionError, RuntimeError):  # the connection has ended
            self._fetching = None

    async def _send_attached(self, message: p.Message, job_id: str, side: str,
                             names: list[str]) -> None:
        try:
            data = await self.app.queries.attachments(job_id, side, names)
        except (LookupError, StoreError) as exc:
            # an assign not sent misses its ack deadline and is retried; a done goes without
            log.warning("job %s: cannot send its %s to %s %s: %s", job_id, message.TYPE,
                        self.role, self.peer, exc)
            if isinstance(message, p.Done):
                self.post(attrs.evolve(message, attachments=[]))
        else:
            self.outbox.post_attached(message, data)
        finally:
            held, self._fetching = self._fetching or [], None
            for index, delivery in enumerate(held):
                if self._fetching is not None:  # another fetch began: the rest waits for it
                    self._fetching.extend(held[index:])
                    break
                self.deliver(delivery)


def _plain(message: p.Submit) -> bool:
    """A submit that may be stored in a burst: no stages, no attachments, no ordered seq."""
    return message.stages is None and not message.attachments and message.seq is None


#: (state, message type) -> the handler, from the state table (schedd.session.handshake)
_HANDLERS: dict[tuple[str, str], Any] = {
    (state, kind): getattr(Session, name)
    for state, kinds in HANDLERS.items() if state != HELLO
    for kind, name in kinds.items()
}
