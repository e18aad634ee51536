"""The README's asyncio examples run as written: the node inside an asyncio program, and the
FastAPI endpoint that submits a job and streams its progress (driven here as an ASGI app),
against the real daemon (in a thread of its own)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.sdk.daemon_thread import DaemonThread

pytestmark = pytest.mark.anyio

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.fixture(params=["asyncio"])  # the examples are asyncio programs
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with DaemonThread("memory://", tmp_path) as running:
        yield running


def example(marker: str, **replace: str) -> dict[str, Any]:
    """The README's python block containing ``marker``, run as a module (not as __main__)."""
    (code,) = [block for block in BLOCKS if marker in block]
    for old, new in replace.items():
        code = code.replace(old, new)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


async def call_asgi(app: Any, path: str, body: bytes) -> tuple[int, bytes]:
    """One POST through ``app``, between its lifespan's startup and shutdown."""
    to_app, from_test = anyio.create_memory_object_stream[dict[str, Any]](10)
    to_test, from_app = anyio.create_memory_object_stream[dict[str, Any]](10)
    async with anyio.create_task_group() as tg:
        tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                      from_test.receive, to_test.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"

        sent: list[dict[str, Any]] = []
        requests = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if requests:
                return requests.pop()
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                   "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                   "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
                   "server": ("127.0.0.1", 80),
                   "headers": [(b"content-type", b"application/json"),
                               (b"content-length", str(len(body)).encode())]},
                  receive, send)
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def test_the_asyncio_node_and_the_fastapi_endpoint(daemon: DaemonThread) -> None:
    pytest.importorskip("fastapi")
    node = example("async def serve(url")
    web = example("FastAPI(lifespan", **{'"ws://127.0.0.1:8765"': repr(daemon.tcp)})
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(node["serve"], daemon.ws)
            status, body = await call_asgi(web["app"], "/translate", b'{"text": "hallo"}')
            tg.cancel_scope.cancel()
    assert status == 200
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines == [{"progress": {"partial": "hel"}},
                     {"state": "done", "output": {"text": "hello", "for": {"text": "hallo"}}}]
