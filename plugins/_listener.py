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
- **A connection never takes the listener down.** Each connection's handler runs under
  :func:`serve_transport`'s guard: a dropped connection is logged at debug level, anything else
  with its traceback, and the stream is closed in every case.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from schedd.config import InvalidSetting
from schedd.errors import ConfigError
from schedd.hookspecs import App
from schedd.sdk.connect import format_address, peer_address

__all__ = [
    "LISTEN_DOC",
    "TLS_CERT_DOC",
    "TLS_KEY_DOC",
    "ConnectionHandler",
    "check_tls_pair",
    "existing_file",
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

#: ``async def handler(app, stream, peer)``: serve one accepted connection to its end.
ConnectionHandler = Callable[[App, trio.abc.Stream, str], Awaitable[None]]


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
    plugin: str, handler: ConnectionHandler, app: App, stream: trio.abc.Stream
) -> None:
    peer = peer_address(stream)
    try:
        await handler(app, stream, peer)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("%s: connection from %s lost: %s", plugin, peer, exc)
    except Exception:
        log.exception("%s: connection from %s failed", plugin, peer)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_transport(
    app: App,
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
    :param https_compatible: passed to ``trio.SSLListener`` (True for WebSocket, as for HTTPS).
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
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = (
            list(sockets)
            if ssl_context is None
            else [
                trio.SSLListener(sock, ssl_context, https_compatible=https_compatible)
                for sock in sockets
            ]
        )
        scheme = schemes[0] if ssl_context is None else schemes[1]
        url = f"{scheme}://{format_address(sockets[0].socket.getsockname())}{url_path}"
        app.listening(plugin, url)  # the app logs it
        task_status.started()

        async def guarded(stream: trio.abc.Stream) -> None:
            await _guard(plugin, handler, app, stream)

        await trio.serve_listeners(guarded, listeners)
    finally:
        for sock in sockets:
            await trio.aclose_forcefully(sock)
