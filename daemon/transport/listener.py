"""What the built-in transports share: listener settings, binding, and the per-connection guard.

Rules of this module:

- **listen** is ``host:port``: an IPv4 address, a host name, or an IPv6 address in brackets
  (``[::1]:8765``), and a port from 0 to 65535 (0 lets the system pick a free port; the port
  really bound is what ``app.listening`` is told). A host name binds every address it resolves
  to, and the URL reported is the first listener's.
- **Order of start-up.** ``app.check_listener`` is asked before anything is bound (it refuses a
  non-loopback host while no tokens are configured); then the sockets are bound, then
  ``app.listening`` hears the real URL, then ``task_status.started()``. Every failure up to
  there (refused host, address in use, unknown host name) raises out of ``nursery.start``, an
  address that cannot be bound as a :class:`~schedd.errors.ConfigError` naming the setting.
- **TLS**: ``tls_cert`` and ``tls_key`` are both set or both empty. When the configuration is
  validated, each file must exist and the pair must load, so ``schedd check-config`` catches a
  bad certificate. Relative paths are taken from the daemon's working directory.
- **Admission first.** Every accepted connection is put to ``app.admission``
  (:mod:`schedd.admission`: the connection caps and the failed-handshake throttle) before any
  work on it: a refused one is reset at once (``SO_LINGER`` 0: no TLS handshake, no HTTP
  answer, nothing read), an admitted one gets its task, and its ticket is released when it
  closes.
- **A connection never takes the listener down.** Each connection's handler runs under
  :func:`serve_transport`'s guard: a dropped connection is logged at debug level, anything else
  with its traceback, and the stream is closed in every case.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, Final, Protocol

import trio

from schedd.admission import CURRENT, Admission, Ticket
from schedd.config import InvalidSetting
from schedd.errors import ConfigError
from schedd.transport.sockets import format_address

__all__ = [
    "LISTEN_DOC",
    "TLS_CERT_DOC",
    "TLS_KEY_DOC",
    "ConnectionHandler",
    "ListenerHost",
    "check_tls_pair",
    "existing_file",
    "handshake_timed_out",
    "parse_listen",
    "serve_transport",
    "server_ssl_context",
    "valid_listen",
]

log = logging.getLogger(__name__)

LISTEN_DOC: Final = "host:port to listen on (IPv6 as [::1]:port; port 0 picks a free port)"
TLS_CERT_DOC: Final = "PEM certificate chain file; with tls_key, enables TLS (empty: no TLS)"
TLS_KEY_DOC: Final = "PEM private key file of tls_cert"

_PORT_RE: Final = re.compile(r"^[0-9]{1,5}$")
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE: Final = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")
_LISTEN_FORM: Final = "host:port, e.g. 127.0.0.1:8765, [::1]:8765 or 0.0.0.0:8765"
#: accept(2) errors that say the system is out of something: wait and accept again
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                            errno.ENOBUFS})
#: accept(2) errors about one connection (gone before it was accepted): accept the next
_ACCEPT_IGNORED_ERRNOS: Final = frozenset(
    getattr(errno, name) for name in ("ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN",
                                      "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
                                      "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))
_ACCEPT_RETRY: Final = 0.1
#: connections accepted per wake-up before other tasks run
_ACCEPT_BATCH: Final = 64
_LINGER_RESET: Final = struct.pack("ii", 1, 0)



class ListenerHost(Protocol):
    """What the listener needs of the daemon it serves (``schedd.api.Daemon`` has it)."""

    @property
    def admission(self) -> Admission:
        """The caps and back-off every accepted connection is put to."""

    def check_listener(self, plugin: str, host: str) -> None:
        """Refuse (``ConfigError``) a host this configuration may not listen on."""

    def listening(self, plugin: str, url: str) -> None:
        """The URL really bound."""


#: ``async def handler(app, stream, peer)``: serve one accepted connection to its end; ``app`` is
#: what :func:`serve_transport` was given.
ConnectionHandler = Callable[[Any, trio.abc.Stream, str], Awaitable[None]]


def parse_listen(text: str) -> tuple[str, int]:
    """Split a ``listen`` setting into (host, port); ``ValueError`` says what is wrong."""
    host, separator, port_text = text.rpartition(":")
    if not separator or not host:
        raise ValueError(f"expected {_LISTEN_FORM}, got {text!r}")
    if not _PORT_RE.match(port_text) or int(port_text) > 65535:
        raise ValueError(f"port must be a number from 0 to 65535, got {port_text!r} in {text!r}")
    if host.startswith("["):
        inner = host[1:-1] if host.endswith("]") else ""
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{host!r} is not a bracketed IPv6 address in {text!r}") from None
        return inner, int(port_text)
    if ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [::1]:8765, got {text!r}")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv4 address in {text!r}") from None
    elif not _HOSTNAME_RE.match(host):
        raise ValueError(f"{host!r} is not a host name or address in {text!r}")
    return host, int(port_text)


def valid_listen(_instance: Any, _attribute: Any, value: str) -> None:
    """attrs validator for a ``listen`` setting."""
    try:
        parse_listen(value)
    except ValueError as exc:
        raise InvalidSetting(str(exc)) from None


def existing_file(_instance: Any, _attribute: Any, value: str) -> None:
    """attrs validator: empty, or the path of a readable file."""
    if not value:
        return
    if not os.path.isfile(value):
        raise InvalidSetting(f"no such file: {value!r}")
    if not os.access(value, os.R_OK):
        raise InvalidSetting(f"file not readable: {value!r}")


def server_ssl_context(tls_cert: str, tls_key: str) -> ssl.SSLContext | None:
    """A server TLS context for the pair, or ``None`` when both are empty.

    Raises ``ssl.SSLError``/``OSError`` when the files do not load.
    """
    if not tls_cert and not tls_key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_cert, tls_key)
    return context


def check_tls_pair(tls_cert: str, tls_key: str) -> None:
    """Both or neither, and they load together; raises ``InvalidSetting``."""
    if bool(tls_cert) != bool(tls_key):
        given, missing = ("tls_cert", "tls_key") if tls_cert else ("tls_key", "tls_cert")
        raise InvalidSetting(f"{given} is set but {missing} is not: set both for TLS, or neither")
    try:
        server_ssl_context(tls_cert, tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidSetting(
            f"tls_cert {tls_cert!r} and tls_key {tls_key!r} do not load as a certificate and "
            f"its key: {exc}"
        ) from None


async def _guard(
    plugin: str, handler: ConnectionHandler, app: ListenerHost, stream: trio.abc.Stream,
    peer: str,
    ticket: Ticket,
) -> None:
    CURRENT.set(ticket)  # this task's: the session reports its handshake's end to it
    try:
        await handler(app, stream, peer)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("%s: connection from %s lost: %s", plugin, peer, exc)
    except Exception:
        log.exception("%s: connection from %s failed", plugin, peer)
    finally:
        ticket.release()
        await trio.aclose_forcefully(stream)


def handshake_timed_out() -> None:
    """The connection this task serves did not finish the transport's own handshake (TLS, the
    HTTP upgrade) in time: a failed handshake for the throttle, as a missing ``hello`` is."""
    ticket = CURRENT.get()
    if ticket is not None:
        ticket.handshake_ended(trio.current_time(), failed=True)


def _reset(sock: socket.socket) -> None:
    """Close a refused connection now, with a reset (no lingering state on this side)."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


async def _accept_loop(
    app: ListenerHost, plugin: str, listener: trio.SocketListener, nursery: trio.Nursery,
    handler: ConnectionHandler, wrap: Callable[[trio.SocketStream], trio.abc.Stream],
) -> None:
    """Accept connections for ever: admit each (or reset it) before it costs a task, a trio
    socket or a system call more than ``accept`` and ``close``."""
    admission = app.admission
    # accept(2) on a plain socket (a duplicate of the listener's descriptor): the address comes
    # with it, and a refused connection never becomes a trio socket or stream
    raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
    try:
        raw.setblocking(False)
        while True:
            await trio.lowlevel.wait_readable(raw)
            for _ in range(_ACCEPT_BATCH):
                try:
                    sock, address = raw.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_IGNORED_ERRNOS:
                        continue
                    if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    # as trio.serve_listeners: out of descriptors or memory for now
                    log.error("%s: accept failed: %s; retrying in %gs", plugin, exc,
                              _ACCEPT_RETRY)
                    await trio.sleep(_ACCEPT_RETRY)
                    break
                peer = format_address(address)
                ticket = admission.admit(peer, trio.current_time())
                if ticket is None:
                    _reset(sock)
                    continue
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                nursery.start_soon(_guard, plugin, handler, app, wrap(stream), peer, ticket)
            await trio.lowlevel.checkpoint()
    finally:
        raw.close()


async def serve_transport(
    app: ListenerHost,
    plugin: str,
    *,
    listen: str,
    tls_cert: str,
    tls_key: str,
    schemes: tuple[str, str],
    https_compatible: bool,
    handler: ConnectionHandler,
    task_status: trio.TaskStatus[None],
    url_path: str = "",
) -> None:
    """Bind ``listen``, report readiness, then serve every connection with ``handler``.

    :param plugin: the plugin's name (for ``check_listener``, ``listening``, errors and logs).
    :param schemes: the URL scheme without and with TLS, e.g. ``("ws", "wss")``.
    :param https_compatible: passed to ``trio.SSLStream`` (True for WebSocket, as for HTTPS).
    :param handler: serves one connection; see :data:`ConnectionHandler`.
    :param url_path: appended to the URL reported to ``app.listening`` (``/nodes``).
    :raises ConfigError: when the host is refused or the address cannot be bound.
    """
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError([f"$.plugins.{plugin}.listen: {exc}"]) from None
    app.check_listener(plugin, host)
    try:
        ssl_context = server_ssl_context(tls_cert, tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError([f"$.plugins.{plugin}.tls_cert: cannot load: {exc}"]) from None
    try:
        sockets = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            [f"$.plugins.{plugin}.listen: cannot listen on {listen}: {exc.strerror or exc}"]
        ) from None
    try:
        scheme = schemes[0] if ssl_context is None else schemes[1]
        url = f"{scheme}://{format_address(sockets[0].socket.getsockname())}{url_path}"
        app.listening(plugin, url)  # the app logs it
        task_status.started()

        def wrap(stream: trio.SocketStream) -> trio.abc.Stream:
            if ssl_context is None:
                return stream
            return trio.SSLStream(stream, ssl_context, server_side=True,
                                  https_compatible=https_compatible)

        async with trio.open_nursery() as nursery:
            for sock in sockets:
                nursery.start_soon(_accept_loop, app, plugin, sock, nursery, handler, wrap)
    finally:
        for sock in sockets:
            await trio.aclose_forcefully(sock)
