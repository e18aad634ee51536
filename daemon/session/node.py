"""The node role: a node's messages, its registration, and its heartbeats.

A node connection speaks only for the node id it registered, and only for jobs assigned to that
node (the scripts fence by node and epoch). Its deliveries (``assign``, ``cancel``, ``drain``)
are held while a ``register`` runs, so the node learns its epoch before any job.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import orjson
import trio

import schedd.protocol as p
from schedd.core import new_id
from schedd.core.burst import MAX_BURST, BurstItem, Recorded
from schedd.errors import ProtocolError
from schedd.node_ids import node_id_allowed, refusal
from schedd.protocol.attachments import Blob
from schedd.session.base import SessionBase, checked_pools, log, log_job

#: where a message of a node's run came from: the message handled (None), a frame read ahead of
#: its turn, or an element of an array frame
_Source = bytes | str | p.BatchElement | None


class NodeRole(SessionBase):
    """The session's handlers of a node's messages (schedd.session.handshake.HANDLERS)."""

    def speaks_for(self, node_id: str) -> bool:
        """Whether this connection holds the node's registration, or is registering it."""
        return node_id in (self.node_id, self._registering)

    def refuse_stale(self, why: str | None = None) -> None:
        """The node's registration is no longer current: say so (``E_STALE_EPOCH``, with
        ``why`` when given) and close (it will register again, here or elsewhere)."""
        node_id = self.node_id
        self.node_id = None  # no longer speaks for the node: no offline when it closes
        if node_id is not None:
            self.app.router.unbind_node(node_id, self.session)
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
                protocol=self.protocol,
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
        previous = self.app.router.bind_node(node_id, self.session)
        try:
            reg = await self.app.core.register_node(
                node_id=node_id, capacity=m.capacity, pools=pools,
                capabilities_json=orjson.dumps(m.capabilities).decode(),
                labels_json=orjson.dumps(m.labels).decode(), principal=self.principal,
                protocol=self.protocol,
            )
        except BaseException:
            self.app.router.unbind_node(node_id, self.session, restore=previous)
            held, self._held = self._held, None
            self.app.router.reroute(held)
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
        if beat is None or raw != self._beat_raw or self.node_id is None or self.epoch is None \
                or self.collector.waiting or isinstance(raw, Blob):  # an attachment frame
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
        """Record the accept, with the job messages that arrived behind it (:meth:`_job_burst`).

        Alone, it is one ``job_accept`` call; followed by the attempt's ``result`` alone (a job
        that took no time: the node sent both in one write), one ``job_result`` call records
        both (docs/decisions/0012-accept-and-result-in-one-call.md). If that joint call fails,
        the accept is answered as its own call would have been, and the result is handled next,
        alone, as if nothing had been tried (the script fences before it writes, so a refused
        call changed nothing).
        """
        node_id, _ = self._need_registered(m)
        run = self._burst_behind(m)
        if len(run) > 2 or (len(run) == 2 and not _pair(m, run[1][1])):
            await self._job_burst(node_id, [message for _, message in run])
            return
        if len(run) == 1:
            await self.app.core.accept(m.job_id, node_id=node_id, attempt=m.attempt)
            log_job(self.traces.get(m.job_id, ""), "job %s attempt %s running on node %s",
                    m.job_id, m.attempt, node_id)
            return
        source, result = run[1]
        assert isinstance(result, p.Result) and source is not None
        try:
            await self._record_result(node_id, result, accepted=True)
        except Exception:
            self._hand_back(source)  # before what ended the run
            raise

    def _burst_behind(self, first: p.Accept | p.Result) -> list[tuple[_Source,
                                                                     p.Accept | p.Result]]:
        """``first`` and the run of job messages already received behind it (no read, no
        wait): ``accept``s and ``result``s without attachments, each within the rate limit, at
        most MAX_BURST in all; from the rest of an array frame first, then from frames already
        read (an array frame among them is split and its elements taken in turn). The first
        message that is not one of them is handed back to the loop, which handles it next (or
        says why it cannot): the run never passes a ``heartbeat``, ``progress`` or ``reject``,
        so messages keep their order."""
        run: list[tuple[_Source, p.Accept | p.Result]] = [(None, first)]
        pending = self._pending
        while len(run) < MAX_BURST:
            source: _Source
            if pending:
                head = pending[0]
                if not isinstance(head, p.BatchElement):
                    break  # a refused element: the loop answers it
                source, message = head, _decoded(head.data)
            else:
                raw: bytes | str | None = self.channel.receive_nowait()
                if raw is None:
                    break
                if not isinstance(raw, Blob) and not self.collector.waiting and p.is_batch(raw):
                    self._next.append(raw)  # the loop splits it (or refuses it whole)
                    break
                source, message = raw, _decoded(raw)
            now = trio.current_time()
            if isinstance(message, p.Accept | p.Result) \
                    and not (isinstance(message, p.Result) and message.attachments) \
                    and self.rate.allow(now):
                self.last_seen = now
                if source is not None and pending and source is pending[0]:
                    pending.popleft()
                run.append((source, message))
                continue
            if not (pending and source is pending[0]):
                self._next.append(source)  # type: ignore[arg-type]
            break
        return run

    def _hand_back(self, source: _Source) -> None:
        """Put a message taken by :meth:`_burst_behind` back in front of what the loop handles
        next, where it came from."""
        if isinstance(source, p.BatchElement):
            self._pending.appendleft(source)
        elif source is not None:
            self._next.insert(0, source)

    async def _job_burst(self, node_id: str, run: list[p.Accept | p.Result]) -> None:
        """Record a run of job messages in one ``job_result_many`` call
        (docs/decisions/0026-node-batches.md): each as its own call would record it, an
        ``accept`` followed by its ``result`` as one item. Each refused message is answered as
        its own call's refusal would be, in order; a call that fails as a whole answers every
        message with its failure (none of them was recorded)."""
        items: list[BurstItem] = []
        index = 0
        while index < len(run):
            m = run[index]
            behind = run[index + 1] if index + 1 < len(run) else None
            if isinstance(m, p.Accept) and _pair(m, behind):
                assert isinstance(behind, p.Result)
                items.append(_item(behind, accept=True))
                index += 2
                continue
            items.append(_item(m) if isinstance(m, p.Result)
                         else BurstItem(m.job_id, m.attempt, accept=True, result=False))
            index += 1
        try:
            outcomes = await self.app.core.finish_many(node_id, items)
        except Exception as exc:
            for m in run:
                self._refused(m, exc)
            return
        for m, outcome in zip(run, outcomes, strict=True):
            if not isinstance(outcome, Recorded):
                self._refused(m, outcome)
            elif isinstance(m, p.Accept):
                log_job(self.traces.get(m.job_id, ""), "job %s attempt %s running on node %s",
                        m.job_id, m.attempt, node_id)
            else:
                log_job(self.traces.pop(m.job_id, ""), "job %s attempt %s %s on node %s",
                        m.job_id, m.attempt, "succeeded" if m.ok else "failed", node_id)

    async def _reject(self, m: p.Reject) -> None:
        node_id, _ = self._need_registered(m)
        await self.app.core.reject(m.job_id, node_id=node_id, attempt=m.attempt,
                                   reason=m.reason or "rejected")
        log_job(self.traces.pop(m.job_id, ""), "job %s attempt %s rejected by node %s: %s",
                m.job_id, m.attempt, node_id, m.reason)

    async def _progress(self, m: p.Progress) -> None:
        node_id, _ = self._need_registered(m)
        await self.app.core.progress(m.job_id, node_id=node_id, attempt=m.attempt,
                                     data_json=orjson.dumps(m.data).decode())

    async def _result(self, m: p.Result) -> None:
        node_id, _ = self._need_registered(m)
        run = [] if m.attachments else self._burst_behind(m)
        if len(run) > 1:
            await self._job_burst(node_id, [message for _, message in run])
            return
        await self._record_result(node_id, m)

    async def _record_result(self, node_id: str, m: p.Result, *, accepted: bool = False) -> None:
        error = {"code": m.error.code, "message": m.error.message} if m.error else None
        data = self.attached.get(id(m), [])
        await self.app.core.result(
            m.job_id, node_id=node_id, attempt=m.attempt, ok=m.ok,
            output_json=orjson.dumps(m.output).decode(), error=error, accepted=accepted,
            retryable=m.retryable,
            attachments=[(spec.name, spec.media_type, blob)
                         for spec, blob in zip(m.attachments, data, strict=True)],
        )
        trace = self.traces.pop(m.job_id, "")
        if accepted:  # its accept came with it and was recorded by the same call
            log_job(trace, "job %s attempt %s running on node %s", m.job_id, m.attempt, node_id)
        log_job(trace, "job %s attempt %s %s on node %s", m.job_id, m.attempt,
                "succeeded" if m.ok else "failed", node_id)

    async def _unavailable(self, m: p.Unavailable) -> None:
        node_id, epoch = self._need_registered(m)
        await self.app.core.mark_unavailable(node_id, epoch=epoch, service=m.service, ttl=m.ttl)

    async def _node_drain(self, m: p.Drain) -> None:
        node_id, epoch = self._need_registered(m)
        self.draining = True
        await self.app.core.drain_node(node_id, epoch=epoch, reason=m.reason or "requested by node")
        self.post(p.Drain(reason=m.reason or "requested by node", ref=m.ref))


def _pair(accept: p.Accept, behind: p.Message | None) -> bool:
    """Whether ``behind`` is the result of the attempt ``accept`` accepted."""
    return isinstance(behind, p.Result) and behind.job_id == accept.job_id \
        and behind.attempt == accept.attempt


def _item(m: p.Result, *, accept: bool = False) -> BurstItem:
    """A result (without attachments) as an item of a node's burst."""
    error = {"code": m.error.code, "message": m.error.message} if m.error else None
    return BurstItem(m.job_id, m.attempt, accept=accept, ok=m.ok,
                     output_json=orjson.dumps(m.output).decode(), error=error,
                     retryable=m.retryable)


def _decoded(raw: bytes | str) -> p.Message | None:
    """The message a frame holds; None for an attachment frame or what does not decode (the
    receiving loop says why)."""
    if isinstance(raw, Blob):
        return None
    try:
        return p.decode(raw)
    except ProtocolError:
        return None
