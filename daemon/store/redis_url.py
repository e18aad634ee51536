"""What a ``redis://``, ``rediss://`` or ``unix://`` URL says: the options this store takes,
the TLS context, the commands that open a connection, and the URL as logs show it."""

from __future__ import annotations

import ssl
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

from schedd.errors import ConfigError
from schedd.store.base import Arg

_URL_KEYS: Final = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "connection_class",
    }
)
_CERT_REQS: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def _mask_url(url: str) -> str:
    """``url`` as logs and errors show it: passwords masked."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostinfo}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(key == "password" for key, _ in pairs):
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*/")
    masked = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        masked += f"?{query}"
    return masked


def ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    """The TLS context a ``rediss://`` URL's options ask for."""
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    reqs = options.get("ssl_cert_reqs")
    if reqs is not None:
        mode = _CERT_REQS.get(str(reqs).lower())
        if mode is None:
            raise ConfigError([f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}"])
        if mode != ssl.CERT_REQUIRED:
            context.check_hostname = False  # must go first: it forbids CERT_NONE while set
        context.verify_mode = mode
    return context

def handshake_commands(options: dict[str, Any]) -> list[tuple[Arg, ...]]:
    """What a new connection sends first: AUTH and SELECT as the URL says, then PING."""
    commands: list[tuple[Arg, ...]] = []
    password = options.get("password")
    username = options.get("username")
    if password is not None:
        commands.append(("AUTH", username, password) if username else ("AUTH", password))
    db = int(options.get("db") or 0)
    if db:
        commands.append(("SELECT", db))
    # PING proves a Redis is answering, not just that something accepted the connection.
    commands.append(("PING",))
    return commands
