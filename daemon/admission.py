"""Who may open a connection: the connection caps and the failed-handshake throttle.

Rules of this module:

- **Checked at accept time**, before any work on the connection (no task, no TLS handshake, no
  HTTP upgrade, no session): :meth:`Admission.admit` counts the connection and returns its
  :class:`Ticket`, or ``None`` and the transport closes the socket at once (with a reset).
- **An address** is the peer's IPv4 address, or the /64 network of its IPv6 address (one host
  gets a whole /64 and can cycle through it). Loopback addresses are addresses like any other.
- **Caps** (``[limits]``, read at every call, so a SIGHUP applies them to new connections):
  ``max_connections`` open in all and ``max_connections_per_address`` from one address;
  ``max_pending_handshakes`` in all and ``max_pending_handshakes_per_address`` from one address
  of the connections whose handshake has not ended (accepted, ``hello`` not yet answered by
  ``welcome``). Open connections are never closed by a cap: it refuses the next one.
- **Throttle**: ``max_failed_handshakes`` failed handshakes from one address within
  ``failed_handshake_window`` seconds (a ``hello`` refused: wrong or missing token, wrong
  version, a first message that is not a ``hello``; or no ``hello`` within
  ``handshake_timeout``) refuse every new connection from that address for
  ``failed_handshake_backoff`` seconds, a well-behaved client's too: nothing is known of a
  connection before its handshake. A peer that connects and leaves without sending anything
  has not failed. One warning per back-off.
- **Bounded memory**: per-address counters exist while the address has a connection open; the
  failure table keeps at most :data:`MAX_TRACKED` addresses, the least recently failed dropped
  first.
- **Logs**: a refusal by a cap is logged at most once per :data:`LOG_EVERY` seconds per cap,
  with the number refused since the previous line.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from schedd.config import LimitsSection

__all__ = ["CURRENT", "LOG_EVERY", "MAX_TRACKED", "Admission", "Ticket", "address_of"]

log = logging.getLogger(__name__)

#: Addresses the failure table keeps at most.
MAX_TRACKED: Final = 10_000
#: Seconds between two log lines of one cap's refusals.
LOG_EVERY: Final = 10.0

#: The ticket of the connection the current task serves (set by the transport's guard, read by
#: the session when it starts): how a session reports the end of its handshake.
CURRENT: ContextVar[Ticket | None] = ContextVar("schedd_admission_ticket", default=None)


def address_of(peer: str) -> str:
    """The address a peer counts under: ``ip`` of ``ip:port``, ``net/64`` of ``[ipv6]:port``."""
    host = peer.rpartition(":")[0] or peer
    if not host.startswith("["):
        return host
    try:
        network = ipaddress.IPv6Network(f"{host[1:-1]}/64", strict=False)
    except ValueError:
        return host
    return str(network)


@attrs.define
class _Failures:
    count: int
    since: float  # start of the window
    until: float = 0.0  # end of the back-off, 0 while none
    refused: int = 0  # connections refused during the back-off


@attrs.define(eq=False)
class Ticket:
    """One admitted connection: ended handshake and close are reported here, once each."""

    admission: Admission
    address: str
    pending: bool = True
    open: bool = True

    def handshake_ended(self, now: float, *, failed: bool) -> None:
        """The handshake ended: a ``welcome`` sent, or (``failed``) refused or timed out."""
        if not self.pending:
            return
        self.pending = False
        self.admission._unpend(self.address)
        if failed:
            self.admission.failed(self.address, now)

    def release(self) -> None:
        """The connection closed."""
        if not self.open:
            return
        self.open = False
        if self.pending:
            self.pending = False
            self.admission._unpend(self.address)
        self.admission._close(self.address)


class _RefusalLog:
    """One warning line per cap per LOG_EVERY seconds, counting the refusals in between."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def note(self, cap: str, limit: int, address: str, now: float) -> None:
        count = self._count.get(cap, 0) + 1
        last = self._last.get(cap)
        if last is not None and now - last < LOG_EVERY:
            self._count[cap] = count
            return
        self._last[cap], self._count[cap] = now, 0
        log.warning("refused %d connection(s)%s: %s (%d) reached; last from %s", count,
                    f" in {now - last:.0f}s" if last is not None else "", cap, limit, address)


class Admission:
    """The caps and the throttle of one daemon instance (see the module's rules).

    :param limits: returns the ``[limits]`` in force (``App.limits``, replaced on reload).
    """

    def __init__(self, limits: Callable[[], LimitsSection]) -> None:
        self._limits = limits
        self.open = 0
        self.pending = 0
        self.open_by_address: dict[str, int] = {}
        self.pending_by_address: dict[str, int] = {}
        self.failures: OrderedDict[str, _Failures] = OrderedDict()
        self._refusals = _RefusalLog()

    def admit(self, peer: str, now: float) -> Ticket | None:
        """Count a new connection from ``peer`` (``ip:port``) and return its ticket, or refuse
        it (``None``)."""
        address = address_of(peer)
        limits = self._limits()
        record = self.failures.get(address)
        if record is not None and record.until:
            if now < record.until:
                record.refused += 1
                return None
            log.info("%s: back-off over (%d connection(s) refused during it)", address,
                     record.refused)
            del self.failures[address]
        opened = self.open_by_address.get(address, 0)
        pending = self.pending_by_address.get(address, 0)
        for cap, count, limit in (
            ("max_connections", self.open, limits.max_connections),
            ("max_connections_per_address", opened, limits.max_connections_per_address),
            ("max_pending_handshakes", self.pending, limits.max_pending_handshakes),
            ("max_pending_handshakes_per_address", pending,
             limits.max_pending_handshakes_per_address),
        ):
            if count >= limit:
                self._refusals.note(cap, limit, address, now)
                return None
        self.open += 1
        self.pending += 1
        self.open_by_address[address] = opened + 1
        self.pending_by_address[address] = pending + 1
        return Ticket(self, address)

    def failed(self, address: str, now: float) -> None:
        """A handshake from ``address`` failed: count it; start a back-off at the limit."""
        limits = self._limits()
        record = self.failures.get(address)
        if record is None or _expired(record, now, limits.failed_handshake_window):
            record = self.failures[address] = _Failures(count=0, since=now)
        self.failures.move_to_end(address)
        while len(self.failures) > MAX_TRACKED:
            self.failures.popitem(last=False)
        if record.until:
            return  # already backing off (a connection admitted before it began)
        record.count += 1
        if record.count >= limits.max_failed_handshakes:
            record.until = now + limits.failed_handshake_backoff
            log.warning("%s: %d failed handshakes in %.1fs; refusing its connections for %gs",
                        address, record.count, now - record.since,
                        limits.failed_handshake_backoff)

    def _unpend(self, address: str) -> None:
        self.pending -= 1
        _decrement(self.pending_by_address, address)

    def _close(self, address: str) -> None:
        self.open -= 1
        _decrement(self.open_by_address, address)


def _expired(record: _Failures, now: float, window: float) -> bool:
    """The record's back-off is over, or (none begun) its window passed."""
    return now >= record.until if record.until else now - record.since > window


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
