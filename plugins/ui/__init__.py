"""The ui plugin: an HTTP server in the daemon with a JSON API, Prometheus metrics and a dashboard.

Rules of this plugin:

- **Settings** ``[plugins.ui]``: ``listen`` (default ``127.0.0.1:8780``; port 0 picks a free
  port), ``token`` or ``token_file`` (at most one; both empty: a token is generated at start),
  ``admin_token`` or ``admin_token_file`` (the operator actions' token, distinct from ``token``;
  both empty: no actions),
  ``refresh`` (seconds between dashboard updates), ``tls_cert``/``tls_key`` (both or neither:
  HTTPS) and ``metrics_label_limit``. See :class:`UiSettings`.
- **Global view.** Every figure is read from Redis (``app.queries``), so every instance serves
  the same picture; only this instance's connections and listeners are local. See :mod:`.stats`.
- **One token guards everything but** ``/healthz`` and the operator actions (``POST
  /api/admin/...``, :mod:`.admin`), which take the admin token only. It is separate from the
  node and client tokens of ``[auth]``. A generated token lives as long as the process and is
  logged once, in the dashboard URL (at WARNING, so a new user sees it at any log level); a
  configured token is never logged.
- **Listening beyond loopback** needs both ``app.check_listener`` (node and client tokens are
  configured; it is not asked about loopback, where its warning speaks of node and client
  connections, not of this server) and a configured ui token: a generated one changes at every
  restart and exists only in the log, which is no way to hand a secret to a remote browser or
  scraper. Without TLS the token crosses the network in clear, so set ``tls_cert``/``tls_key``
  or put a TLS proxy in front.
- **Order of start-up**, as for the transports: the listen address is checked, the sockets are
  bound (:func:`trio.open_tcp_listeners`: a host name binds every address it resolves to), an
  address that cannot be bound is a :class:`~schedd.errors.ConfigError`; then hypercorn serves
  them, ``app.listening("ui", url)`` hears the real URL, and ``task_status.started()`` is called.
- **Server.** :func:`hypercorn.trio.serve` runs the hand-written ASGI application of
  :mod:`.asgi` on the daemon's own trio loop. Its shutdown trigger never fires: the daemon stops
  the service by cancelling it, and open dashboard polls are simply cut.
- **Extension point**: other plugins add their ``schedd_*`` families to ``/metrics`` with
  :func:`add_collector`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from functools import partial
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import quote

import attrs
import hypercorn.config
import hypercorn.trio
import hypercorn.typing
import trio

from schedd.api import (
    LISTEN_DOC,
    TLS_CERT_DOC,
    TLS_KEY_DOC,
    ConfigError,
    Daemon,
    InvalidSetting,
    Service,
    check_tls_pair,
    existing_file,
    hookimpl,
    is_loopback,
    parse_listen,
    setting,
    valid_listen,
)
from schedd.plugins.ui.asgi import Dashboard, UiApplication
from schedd.plugins.ui.metrics import add_collector

__all__ = [
    "PLUGIN_NAME",
    "UiSettings",
    "add_collector",
    "read_token_file",
    "schedd_plugin_config",
    "schedd_services",
    "serve",
]

log = logging.getLogger(__name__)

PLUGIN_NAME: Final = "ui"
MIN_TOKEN_LENGTH: Final = 16
_TOKEN_RE: Final = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: a bearer token


def _hidden(token: str) -> str:
    return "<token>" if token else "''"


def _valid_token(_instance: Any, _attribute: Any, value: str) -> None:
    if not value:
        return
    if not _TOKEN_RE.match(value):
        raise InvalidSetting("a token is printable ASCII without spaces")
    if len(value) < MIN_TOKEN_LENGTH:
        raise InvalidSetting(
            f"a token needs at least {MIN_TOKEN_LENGTH} characters, got {len(value)} "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )


def _between(low: float, high: float) -> Any:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if not low <= value <= high:  # written this way round so NaN fails
            raise InvalidSetting(f"expected a number between {low:g} and {high:g}, got {value:g}")

    return check


def _at_least(low: int) -> Any:
    def check(_instance: Any, _attribute: Any, value: int) -> None:
        if not value >= low:
            raise InvalidSetting(f"expected an integer >= {low}, got {value}")

    return check


def read_token_file(path: str) -> str:
    """The token in ``path``: its first line that is neither empty nor a ``#`` comment."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise InvalidSetting(f"{path!r} holds no token (only empty lines and # comments)")


@attrs.frozen
class UiSettings:
    """``[plugins.ui]``: where the HTTP server listens, its token, and the dashboard's pace."""

    listen: str = setting("127.0.0.1:8780", LISTEN_DOC, valid_listen)
    token: str = setting(
        "",
        "bearer token for every path but /healthz (at least 16 characters); empty: token_file, "
        "else one is generated at start and logged in the dashboard URL",
        _valid_token,
        shown=_hidden,
    )
    token_file: str = setting(
        "", "file holding the token: its first line that is not empty or a # comment",
        existing_file,
    )  # fmt: skip
    admin_token: str = setting(
        "",
        "bearer token of the dashboard's operator actions (drain, undrain, cancel, requeue; at "
        "least 16 characters, not the read-only token); empty: admin_token_file, else no actions",
        _valid_token,
        shown=_hidden,
    )
    admin_token_file: str = setting(
        "", "file holding the admin token: its first line that is not empty or a # comment",
        existing_file,
    )  # fmt: skip
    refresh: float = setting(2.0, "seconds between dashboard updates", _between(0.2, 3600))
    tls_cert: str = setting("", TLS_CERT_DOC, existing_file)
    tls_key: str = setting("", TLS_KEY_DOC, existing_file)
    metrics_label_limit: int = setting(
        1000,
        "most values of the pool and reason labels per metric family; the rest are added up "
        "under the value _other",
        _at_least(2),
    )

    def __attrs_post_init__(self) -> None:
        check_tls_pair(self.tls_cert, self.tls_key)
        if self.token and self.token_file:
            raise InvalidSetting("token and token_file are both set: set one of them")
        if self.token_file:
            try:
                _valid_token(self, None, read_token_file(self.token_file))
            except OSError as exc:
                raise InvalidSetting(f"cannot read token_file: {exc}") from None
            except InvalidSetting as exc:
                raise InvalidSetting(f"token_file {self.token_file!r}: {exc}") from None
        if self.admin_token and self.admin_token_file:
            raise InvalidSetting("admin_token and admin_token_file are both set: set one of them")
        admin = self.admin_token
        if self.admin_token_file:
            try:
                admin = read_token_file(self.admin_token_file)
                _valid_token(self, None, admin)
            except OSError as exc:
                raise InvalidSetting(f"cannot read admin_token_file: {exc}") from None
            except InvalidSetting as exc:
                raise InvalidSetting(f"admin_token_file {self.admin_token_file!r}: {exc}") from None
        read = self.token
        if self.token_file:
            read = read_token_file(self.token_file)
        if admin and admin == read:
            raise InvalidSetting("the admin token is the read-only token: give operator actions "
                                 "a token of their own")


@hookimpl
def schedd_plugin_config() -> type:
    """Declare :class:`UiSettings`."""
    return UiSettings


@hookimpl
def schedd_services(app: Daemon) -> list[Service]:
    """The HTTP server."""
    return [serve]


def _admin_token(settings: UiSettings) -> str:
    """The admin token ('' when none: the ui offers no actions)."""
    if settings.admin_token_file:
        try:
            return read_token_file(settings.admin_token_file)
        except (OSError, InvalidSetting) as exc:
            raise ConfigError([f"$.plugins.{PLUGIN_NAME}.admin_token_file: {exc}"]) from None
    return settings.admin_token


def _token(settings: UiSettings) -> tuple[str, bool]:
    """(token, whether it was generated now)."""
    if settings.token:
        return settings.token, False
    if settings.token_file:
        try:
            return read_token_file(settings.token_file), False
        except (OSError, InvalidSetting) as exc:
            raise ConfigError([f"$.plugins.{PLUGIN_NAME}.token_file: {exc}"]) from None
    return secrets.token_urlsafe(32), True


def _hypercorn_config(settings: UiSettings, fds: list[int]) -> hypercorn.config.Config:
    config = hypercorn.config.Config()
    config.bind = [f"fd://{fd}" for fd in fds]
    if settings.tls_cert:
        config.certfile, config.keyfile = settings.tls_cert, settings.tls_key
    config.accesslog = None  # the query string may carry the token
    server_log = logging.getLogger(f"{__name__}.hypercorn")
    if server_log.level == logging.NOTSET:
        server_log.setLevel(logging.WARNING)  # not its "Running on …, CTRL + C to quit"
    config.errorlog = server_log
    config.include_server_header = False
    return config


async def serve(
    app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the ui on ``listen`` until cancelled; see the module rules for the order of start-up.

    :raises ConfigError: when the host is refused, the token file cannot be read, or the address
        cannot be bound.
    """
    settings = app.plugin_config(PLUGIN_NAME)
    assert isinstance(settings, UiSettings)
    try:
        host, port = parse_listen(settings.listen)
    except ValueError as exc:
        raise ConfigError([f"$.plugins.{PLUGIN_NAME}.listen: {exc}"]) from None
    token, generated = _token(settings)
    loopback = is_loopback(host)
    if not loopback:
        app.check_listener(PLUGIN_NAME, host)
    if generated and not loopback:
        raise ConfigError([
            f"$.plugins.{PLUGIN_NAME}.listen: {host} is not a loopback address and the ui token "
            "would be generated (it changes at every restart and is only in the log); set "
            f"[plugins.{PLUGIN_NAME}] token_file or token (or SCHEDD_PLUGINS__UI__TOKEN_FILE)"
        ])  # fmt: skip
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            [f"$.plugins.{PLUGIN_NAME}.listen: cannot listen on {settings.listen}: "
             f"{exc.strerror or exc}"]
        ) from None
    # hypercorn takes the bound sockets as file descriptors and owns the duplicates from here on
    fds = [os.dup(listener.socket.fileno()) for listener in listeners]
    for listener in listeners:
        await listener.aclose()
    application = UiApplication(
        app, token, Dashboard.load(settings.refresh), settings.metrics_label_limit,
        _admin_token(settings),
    )
    config = _hypercorn_config(settings, fds)
    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(
            partial(
                hypercorn.trio.serve,
                cast("hypercorn.typing.ASGIFramework", application),
                config,
                shutdown_trigger=trio.sleep_forever,
            )
        )
        app.listening(PLUGIN_NAME, urls[0])  # the app logs it
        if generated:
            log.warning("dashboard: %s/?token=%s (token generated at start; set [plugins.ui] "
                        "token_file to keep one across restarts)", urls[0], quote(token, safe=""))
        else:
            log.info("dashboard: %s/?token=<the [plugins.ui] token>", urls[0])
        task_status.started()
