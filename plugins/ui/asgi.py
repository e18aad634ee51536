"""The ui's ASGI application: a small router, the token check, and the endpoints.

Rules of this module:

- **Routes** (GET and HEAD only; anything else is 405): ``/healthz`` (with the daemon's version
  and instance), ``/``, ``/metrics``, ``/api/v1/{nodes,pools,stats,instances,clients,tenants}``,
  ``/api/v1/jobs`` (a page of jobs, every principal's, filtered by the query parameters
  :data:`JOB_PARAMS`) and ``/api/v1/jobs/<job id>`` (the id is the rest of the path,
  percent-decoded, so ids holding ``/`` work when sent as ``%2F``). A job's detail gives the
  sizes of its payload and output, never their content. Operator actions (POST
  ``/api/admin/...``, the admin token's) are :mod:`.admin`'s, before anything else here.
- **Authentication** happens before routing, so without the token every path but ``/healthz``
  answers 401 (an unknown path too: nothing is revealed). The token comes from
  ``Authorization: Bearer <token>`` or else from the ``token`` query parameter, and is compared in
  constant time (:func:`hmac.compare_digest`).
- **Errors are JSON**: ``{"error": {"code": ..., "message": ...}}`` with codes ``unauthorized``
  (401), ``bad_filter`` (400, with ``field``: the parameter at fault), ``not_found`` (404),
  ``method_not_allowed`` (405), ``store_unavailable`` (503) and ``internal`` (500, logged with
  its traceback).
- **Headers**: every response is ``no-store`` with ``nosniff`` and ``no-referrer`` (the page URL
  carries the token); the dashboard adds a Content-Security-Policy that allows exactly its own
  inline style and script (by hash) and fetches to this origin, and forbids framing.
- Lifespan events are acknowledged; WebSocket connections are refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs

import attrs
import orjson
import trio

from schedd.api import Daemon, InvalidField, JobFilter, StoreError, parse_time_bound
from schedd.plugins.ui.admin import ADMIN_PREFIX, AdminApi
from schedd.plugins.ui.metrics import SchedCollector, local_connections, new_registry, render
from schedd.plugins.ui.stats import SnapshotReader, stats_view

__all__ = ["API_PREFIX", "JOB_PARAMS", "Dashboard", "Response", "UiApplication", "token_matches"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

API_PREFIX: Final = "/api/v1/"
#: Principals ``/api/v1/tenants`` lists: the most recently active.
TENANTS_SHOWN: Final = 200
JOB_PREFIX: Final = API_PREFIX + "jobs/"
JOB_PARAMS: Final = ("state", "pool", "principal", "node", "since", "until", "limit", "cursor")
"""The filters of ``/api/v1/jobs``; ``since`` and ``until`` take unix ms or a duration before
now (``10m``), an empty value is no filter."""
SCRIPTS: Final = ("common.js", "dashboard.js", "jobs.js")
"""The dashboard's scripts, inlined in this order into its one ``<script>`` element."""
HEALTH_TIMEOUT: Final = 2.0
JSON_TYPE: Final = "application/json"
COMMON_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[bytes, bytes], ...] = ()


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS))


def error_response(
    status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return Response(status, body, headers=headers)


def _bad_filter(field: str, message: str) -> Response:
    body = orjson.dumps({"error": {"code": "bad_filter", "field": field, "message": message}})
    return Response(400, body)


def token_matches(scope: Scope, token: bytes) -> bool:
    """Whether the request carries ``token`` (bearer header first, else ``?token=``)."""
    supplied: bytes | None = None
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credentials = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                supplied = credentials.strip()
            break
    if supplied is None:
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        values = query.get("token")
        if values:
            supplied = values[0].encode()
    return supplied is not None and hmac.compare_digest(supplied, token)


def _header(scope: Scope, wanted: bytes) -> str:
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            return bytes(value).decode("latin-1")
    return ""


@attrs.frozen
class Dashboard:
    """The dashboard page: one HTML document with its CSS and JS inlined, and its CSP."""

    html: bytes
    csp: bytes

    @classmethod
    def load(cls, refresh: float) -> Dashboard:
        static = resources.files("schedd.plugins.ui") / "static"
        template = (static / "dashboard.html").read_text(encoding="utf-8")
        style = (static / "dashboard.css").read_text(encoding="utf-8")
        script = "\n".join((static / name).read_text(encoding="utf-8") for name in SCRIPTS)
        actions = (static / "actions.js").read_text(encoding="utf-8")
        html = (
            template.replace("{{REFRESH}}", f"{refresh:g}")
            .replace("{{STYLE}}", style)
            .replace("{{SCRIPT}}", script)
            .replace("{{ACTIONS}}", actions)
        )

        def digest(text: str) -> str:
            return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

        csp = (
            "default-src 'none'; "
            f"style-src 'sha256-{digest(style)}'; "
            f"script-src 'sha256-{digest(script)}' 'sha256-{digest(actions)}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        return cls(html.encode(), csp.encode())


class UiApplication:
    """The ASGI callable served by hypercorn."""

    def __init__(self, app: Daemon, token: str, dashboard: Dashboard, label_limit: int,
                 admin_token: str = "") -> None:
        self.app = app
        self._token = token.encode()
        self.admin = AdminApi(app, admin_token, token)
        self._dashboard = dashboard
        self.reader = SnapshotReader(app)
        self.collector = SchedCollector(app, self.reader, label_limit)
        self.registry = new_registry(self.collector)
        self._routes: dict[str, Callable[[Scope], Awaitable[Response]]] = {
            "/": self._page,
            "/metrics": self._metrics,
            API_PREFIX + "nodes": self._nodes,
            API_PREFIX + "pools": self._pools,
            API_PREFIX + "stats": self._stats,
            API_PREFIX + "instances": self._instances,
            API_PREFIX + "clients": self._clients,
            API_PREFIX + "tenants": self._tenants,
            API_PREFIX + "jobs": self._jobs,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
        elif scope["path"].startswith(ADMIN_PREFIX):
            await self._send(scope, send, await self._guarded(self._admin, scope, receive))
        else:
            response = await self.respond(scope)
            await self._send(scope, send, response)

    async def respond(self, scope: Scope) -> Response:
        path: str = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            return error_response(405, "method_not_allowed", "only GET and HEAD are served",
                                  ((b"allow", b"GET, HEAD"),))
        if path == "/healthz":
            return await self._health()
        if not token_matches(scope, self._token):
            return error_response(
                401, "unauthorized",
                "missing or wrong token: send 'Authorization: Bearer <token>' or open the "
                "dashboard URL the daemon logged at start (…/?token=…)",
                ((b"www-authenticate", b'Bearer realm="schedd"'),),
            )  # fmt: skip
        handler = self._routes.get(path)
        if handler is None and path.startswith(JOB_PREFIX) and len(path) > len(JOB_PREFIX):
            return await self._guarded(self._job, scope, path[len(JOB_PREFIX) :])
        if handler is None:
            return error_response(404, "not_found", f"no such path: {path}")
        return await self._guarded(handler, scope)

    async def _guarded(self, handler: Callable[..., Awaitable[Response]], *args: Any) -> Response:
        try:
            return await handler(*args)
        except StoreError as exc:
            log.warning("ui: Redis did not answer: %s", exc)
            return error_response(503, "store_unavailable", f"Redis did not answer: {exc}")
        except Exception:
            log.exception("ui: request failed")
            return error_response(500, "internal", "internal error (logged by the daemon)")

    async def _admin(self, scope: Scope, receive: Receive) -> Response:
        status, data, headers = await self.admin.respond(scope, receive)
        return Response(status, orjson.dumps(data), headers=headers)

    # -- endpoints ---------------------------------------------------------------------------

    async def _health(self) -> Response:
        error = f"no answer within {HEALTH_TIMEOUT:g}s"
        with trio.move_on_after(HEALTH_TIMEOUT):
            try:
                await self.app.store_ping()
            except StoreError as exc:
                error = str(exc)
            else:
                return json_response({"ok": True, **self._identity()})
        return json_response({"ok": False, "error": error, **self._identity()}, 503)

    def _identity(self) -> dict[str, str]:
        return {"version": self.app.version, "instance": self.app.instance}

    async def _page(self, _scope: Scope) -> Response:
        return Response(
            200, self._dashboard.html, "text/html; charset=utf-8",
            ((b"content-security-policy", self._dashboard.csp), (b"x-frame-options", b"DENY")),
        )  # fmt: skip

    async def _metrics(self, scope: Scope) -> Response:
        body, content_type = await render(
            self.collector, self.registry, _header(scope, b"accept")
        )
        return Response(200, body, content_type)

    async def _nodes(self, _scope: Scope) -> Response:
        snapshot = await self.reader.get()
        nodes = []
        for node in snapshot.nodes:
            entry = attrs.asdict(node)
            entry["heartbeat_age_s"] = (
                max(0, snapshot.now_ms - node.last_heartbeat_ms) / 1000
                if node.last_heartbeat_ms
                else None
            )
            nodes.append(entry)
        return json_response({"now_ms": snapshot.now_ms, "nodes": nodes})

    async def _pools(self, _scope: Scope) -> Response:
        snapshot = await self.reader.get()
        pools = [{**attrs.asdict(pool), "size": len(pool.members)} for pool in snapshot.pools]
        return json_response({"now_ms": snapshot.now_ms, "pools": pools})

    async def _stats(self, _scope: Scope) -> Response:
        return json_response(stats_view(await self.reader.get(), self.app.instance))

    async def _instances(self, _scope: Scope) -> Response:
        snapshot = await self.reader.get()
        instances = [
            {
                "instance": name,
                "expires_ms": expires,
                "alive": expires > snapshot.now_ms,
                "this": name == self.app.instance,
            }
            for name, expires in sorted(snapshot.instances.items())
        ]
        return json_response({
            "now_ms": snapshot.now_ms,
            "instances": instances,
            "this": {
                "instance": self.app.instance,
                "version": self.app.version,
                "listeners": dict(self.app.listeners),
                "connections": local_connections(self.app.connection_roles),
            },
        })  # fmt: skip

    async def _clients(self, _scope: Scope) -> Response:
        # every principal's: the ui token sees all (a client sees its own, through `query`)
        clients = await self.app.queries.clients()
        return json_response({"clients": [attrs.asdict(c) for c in clients]})

    async def _tenants(self, _scope: Scope) -> Response:
        # every principal's usage (the ui token sees all; a client sees its own, `query usage`)
        usage = await self.app.queries.usage(limit=TENANTS_SHOWN)
        return json_response({"tenants": [attrs.asdict(u) for u in usage]})

    async def _job(self, _scope: Scope, job_id: str) -> Response:
        job = await self.app.queries.job(job_id)
        if job is None:
            return error_response(
                404, "not_found", f"no job {job_id!r} (never submitted, or past its retention)"
            )
        detail = attrs.asdict(job)
        del detail["output"]  # its size is output_bytes; the content is its principal's
        return json_response({"job": detail})

    async def _jobs(self, scope: Scope) -> Response:
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        params = parse_qs(query, keep_blank_values=True)
        for name, values in params.items():
            if name == "token":
                continue
            if name not in JOB_PARAMS:
                return _bad_filter(name[:40], f"unknown parameter {name[:40]!r}: the filters "
                                   f"are {', '.join(JOB_PARAMS)}")
            if len(values) > 1:
                return _bad_filter(name, f"{name}: given {len(values)} times")
        now_ms = await self.app.store_time_ms()
        given: dict[str, Any] = {}
        try:
            for name in JOB_PARAMS:
                value = params.get(name, [""])[0]
                if value == "":
                    continue
                if name in ("since", "until"):
                    given[name] = parse_time_bound(value, now_ms, name)
                elif name == "limit":
                    if not value.isdigit() or len(value) > 9:
                        raise InvalidField(name, f"{value[:40]!r} is not an integer")
                    given[name] = int(value)
                else:
                    given[name] = value
            job_filter = JobFilter(**given)
        except InvalidField as exc:
            return _bad_filter(exc.path, str(exc))
        page = await self.app.queries.list_jobs(job_filter)
        return json_response({"now_ms": now_ms, "jobs": [attrs.asdict(j) for j in page.jobs],
                              "cursor": page.cursor})

    # -- ASGI plumbing ---------------------------------------------------------------------

    @staticmethod
    async def _send(scope: Scope, send: Send, response: Response) -> None:
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *COMMON_HEADERS,
            *response.headers,
        ]
        await send({"type": "http.response.start", "status": response.status,
                    "headers": headers})
        body = b"" if scope["method"] == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
