"""The ui's operator endpoints: ``POST /api/admin/...``, guarded by the ui's admin token.

Rules of this module:

- **Routes** (POST only; anything else is 405): ``/api/admin/nodes/<id>/drain``,
  ``/api/admin/nodes/<id>/undrain``, ``/api/admin/jobs/<id>/cancel``,
  ``/api/admin/jobs/<id>/requeue`` and ``/api/admin/jobs/requeue`` (a filter in the JSON body:
  ``states``, ``pool``, ``since`` in seconds, ``limit`` at most ``MAX_REQUEUE``; a larger limit is
  refused, not clamped). The id is the path between the prefix and the action, percent-decoded.
- **Authentication**: ``Authorization: Bearer <admin token>`` only (never the query string: an
  action's URL must not carry its credential). No admin token configured, or the read-only
  token: 403 ``forbidden``; no token or another one: 401 ``unauthorized``. Nothing changes then.
- Each action is one call of ``app.operators`` (one script, idempotent), logged there with
  ``ui admin <client address>`` as who; a refused request is logged here at WARNING.
- Answers: 200 ``{"action", "results"}``; a script's refusal maps to 404 ``not_found``
  (``E_NO_NODE``, ``E_NO_JOB``), 409 ``conflict`` (``E_BAD_STATE``, ``E_QUEUE_FULL``), 400
  ``bad_request`` (``E_BAD_ARG``, a bad body); errors are JSON as everywhere in the ui.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson

from schedd.api import MAX_REQUEUE, REQUEUE_STATES, Daemon, RequeueFilter, ScriptError

__all__ = ["ADMIN_PREFIX", "MAX_BODY", "AdminApi", "Reply", "requeue_filter"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Headers = tuple[tuple[bytes, bytes], ...]
#: (HTTP status, the JSON document, extra headers): the ASGI application sends it
Reply = tuple[int, Any, Headers]

log = logging.getLogger(__name__)

ADMIN_PREFIX: Final = "/api/admin/"
#: the largest request body read (a requeue filter is a few dozen bytes)
MAX_BODY: Final = 4096
_STATUS: Final = {"E_NO_NODE": (404, "not_found"), "E_NO_JOB": (404, "not_found"),
                  "E_BAD_STATE": (409, "conflict"), "E_QUEUE_FULL": (409, "conflict")}
_ACTIONS: Final = {"nodes": ("drain", "undrain"), "jobs": ("cancel", "requeue")}


def _error(status: int, code: str, message: str, headers: Headers = ()) -> Reply:
    return status, {"error": {"code": code, "message": message}}, headers


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credentials = bytes(value).partition(b" ")
            return credentials.strip() if scheme.lower() == b"bearer" else None
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if isinstance(client, list | tuple) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return "unknown"


async def _body(receive: Receive) -> bytes:
    """The request body, refused beyond :data:`MAX_BODY` bytes (ValueError)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > MAX_BODY:
            raise ValueError(f"the request body is longer than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def requeue_filter(body: bytes) -> RequeueFilter:
    """The filter a JSON body names; ValueError says what is wrong with it."""
    try:
        data = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(data) - {"states", "pool", "since", "limit"})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; expected states, pool, since, "
                         "limit")
    states = data.get("states", ["failed"])
    if not isinstance(states, list) or not all(s in REQUEUE_STATES for s in states) or not states:
        raise ValueError(f"states must be a non-empty list of {', '.join(REQUEUE_STATES)}")
    pool = data.get("pool")
    if pool is not None and (not isinstance(pool, str) or not pool or len(pool) > 200):
        raise ValueError("pool must be a pool key (1 to 200 characters)")
    since = data.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)
                              or not 0 < since <= 30 * 86400):
        raise ValueError("since must be a number of seconds, > 0 and at most 30 days")
    limit = data.get("limit", MAX_REQUEUE)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_REQUEUE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_REQUEUE} (a requeue acts on "
                         f"at most {MAX_REQUEUE} jobs per call)")
    return RequeueFilter(states=tuple(states), pool=pool,
                         since=float(since) if since is not None else None, limit=limit)


class AdminApi:
    """The operator endpoints of one ui server."""

    def __init__(self, app: Daemon, admin_token: str, read_token: str) -> None:
        self.app = app
        self._admin = admin_token.encode()
        self._read = read_token.encode()

    def _refused(self, scope: Scope) -> Reply | None:
        supplied = _bearer(scope)
        if self._admin and supplied is not None and hmac.compare_digest(supplied, self._admin):
            return None
        why = "no admin token is configured ([plugins.ui] admin_token)"
        status, code = 403, "forbidden"
        if self._admin and supplied is not None and hmac.compare_digest(supplied, self._read):
            why = "the read-only token may not act; send the ui's admin token"
        elif self._admin:
            status, code = 401, "unauthorized"
            why = "missing or wrong token: send 'Authorization: Bearer <the ui's admin token>'"
        log.warning("ui: refused %s %s from %s: %s", scope.get("method"), scope.get("path"),
                    _client(scope), why)
        return _error(status, code, why)

    async def respond(self, scope: Scope, receive: Receive) -> Reply:
        """Answer one request under :data:`ADMIN_PREFIX` (authentication first)."""
        if scope["method"] != "POST":
            return _error(405, "method_not_allowed", "operator actions are POST",
                                  ((b"allow", b"POST"),))
        refused = self._refused(scope)
        if refused is not None:
            return refused
        parts = scope["path"][len(ADMIN_PREFIX):].split("/", 1)
        who = f"ui admin {_client(scope)}"
        try:
            if parts == ["jobs", "requeue"]:
                wanted = requeue_filter(await _body(receive))
                return await self._run("requeue", None, wanted, who)
            kind, rest = parts if len(parts) == 2 else (parts[0], "")
            target, _, action = rest.rpartition("/")
            if not target or action not in _ACTIONS.get(kind, ()):
                return _error(404, "not_found", f"no such path: {scope['path']}")
            return await self._run(action, target, None, who)
        except ValueError as exc:
            return _error(400, "bad_request", str(exc))

    async def _run(self, action: str, target: str | None, wanted: RequeueFilter | None,
                   who: str) -> Reply:
        try:
            results: list[dict[str, Any]] = await self.app.operators.run(
                action, target, wanted, who=who)
        except ScriptError as exc:
            status, code = _STATUS.get(exc.code, (400, "bad_request"))
            return _error(status, code, f"{exc.code}: {exc.message}")
        return 200, {"action": action, "results": results}, ()
