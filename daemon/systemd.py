"""The systemd notification protocol (``sd_notify``), spoken directly: no libsystemd needed.

Rules this module owns:

* **Outside systemd everything is a no-op.** Without ``$NOTIFY_SOCKET`` :func:`notify` returns
  ``False`` and does nothing else; without ``$WATCHDOG_USEC`` :func:`serve_watchdog` returns at
  once. The daemon calls these helpers unconditionally.
* **A notification never fails the daemon.** A send error is logged and reported as ``False``.
* **The watchdog proves health, not liveness of the event loop alone.** :func:`serve_watchdog`
  pings only when the check it is given (the daemon passes a Redis ping) succeeds within one
  interval, so systemd restarts an instance that is running but useless.

The protocol: one datagram of ``KEY=VALUE`` lines to the ``AF_UNIX``/``SOCK_DGRAM`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names a socket in the abstract namespace). See sd_notify(3).
Lifecycle used by schedd: ``READY=1`` once listening; ``RELOADING=1`` on ``SIGHUP`` followed by
``READY=1`` when the reload is done; ``STOPPING=1`` when draining starts; ``WATCHDOG=1`` every half
``WatchdogSec``; ``STATUS=…`` for ``systemctl status``.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Final

import trio

__all__ = [
    "extend_timeout",
    "notify",
    "ready",
    "reloading",
    "serve_watchdog",
    "status",
    "stopping",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

NOTIFY_SOCKET: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC: Final = "WATCHDOG_USEC"
WATCHDOG_PID: Final = "WATCHDOG_PID"


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # vsock: addresses (VMs) and relative paths are not for us.
    return None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment of the datagram.
    return " ".join(text.splitlines())


def notify(*lines: str) -> bool:
    """Send ``lines`` (``KEY=VALUE`` each) to systemd in one datagram.

    :returns: ``True`` when the datagram was sent; ``False`` when not running under systemd
        (no ``$NOTIFY_SOCKET``) or the send failed (logged).
    """
    value = os.environ.get(NOTIFY_SOCKET, "")
    if not value or not lines:
        return False
    address = _address(value)
    if address is None:
        log.warning("unsupported %s address %r; systemd is not notified", NOTIFY_SOCKET, value)
        return False
    message = "\n".join(lines).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the event loop: a full queue is a failed notification, not a stall.
            sock.setblocking(False)
            sock.sendto(message, address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", value, exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell systemd start-up (or a reload) is complete: ``READY=1``."""
    lines = ["READY=1"]
    if status is not None:
        lines.append("STATUS=" + _one_line(status))
    return notify(*lines)


def stopping(status: str | None = None) -> bool:
    """Tell systemd the daemon is shutting down (draining): ``STOPPING=1``."""
    lines = ["STOPPING=1"]
    if status is not None:
        lines.append("STATUS=" + _one_line(status))
    return notify(*lines)


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status``."""
    return notify("STATUS=" + _one_line(text))


def reloading(status: str | None = None) -> bool:
    """Tell systemd a reload started; send :func:`ready` when it is done.

    Sends ``RELOADING=1`` with ``MONOTONIC_USEC`` (systemd 253 and later match the two; older
    versions ignore the stamp).
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
    if status is not None:
        lines.append("STATUS=" + _one_line(status))
    return notify(*lines)


def extend_timeout(seconds: float) -> bool:
    """Ask systemd for ``seconds`` more before it gives up on the start, reload or stop."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of ``WatchdogSec``, or ``None`` without a watchdog.

    ``None`` also when ``$WATCHDOG_PID`` names another process (the variable was inherited).
    """
    usec_text = os.environ.get(WATCHDOG_USEC, "")
    pid_text = os.environ.get(WATCHDOG_PID, "")
    try:
        usec = int(usec_text)
    except ValueError:
        if usec_text:
            log.warning("ignoring %s=%r: not an integer", WATCHDOG_USEC, usec_text)
        return None
    if usec <= 0:
        return None
    if pid_text:
        try:
            pid = int(pid_text)
        except ValueError:
            log.warning("ignoring the watchdog: %s=%r is not a pid", WATCHDOG_PID, pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 2 / 1_000_000


async def serve_watchdog(
    check: Callable[[], Awaitable[bool]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``WATCHDOG=1`` every :func:`watchdog_interval` seconds while ``check()`` is healthy.

    ``check`` is given one interval to answer; an exception, a timeout or ``False`` skips that
    ping (logged once until health returns), so systemd restarts the daemon after ``WatchdogSec``
    of ill health. Reports ready at once; returns at once when there is no watchdog. Runs until
    cancelled otherwise.
    """
    interval = watchdog_interval()
    task_status.started()
    if interval is None:
        return
    log.info("systemd watchdog enabled: pinging every %.3g s while healthy", interval)
    healthy = True
    next_ping = trio.current_time()
    while True:
        ok = False
        reason = "check timed out"
        with trio.move_on_after(interval):
            try:
                ok = await check()
                reason = "check failed"
            except Exception as exc:
                reason = f"check raised {type(exc).__name__}: {exc}"
        if ok:
            notify("WATCHDOG=1")
            if not healthy:
                log.info("health check passes again; watchdog pings resumed")
        elif healthy:
            log.warning("withholding watchdog ping: %s", reason)
        healthy = ok
        # Keep the cadence: a slow check must not stretch the gap between pings.
        next_ping = max(next_ping + interval, trio.current_time())
        await trio.sleep_until(next_ping)
