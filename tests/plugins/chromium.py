"""Drive a headless Chromium over its DevTools protocol (a WebSocket), with no Node.js.

:func:`open_page` starts ``chromium`` with ``--remote-debugging-port=0``, reads the port it chose
from ``DevToolsActivePort`` in the throw-away profile, finds the blank page's target through
``/json/list`` and connects to it with trio-websocket. :class:`Page` sends one command at a
time and keeps every event it receives meanwhile (console messages, log entries) in
``events``. The browser is terminated when the context exits.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome")
     if (path := shutil.which(name)) is not None),
    None,
)  # fmt: skip

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


class DevToolsError(Exception):
    pass


class Page:
    """One page target: ``call`` a DevTools method, ``evaluate`` JavaScript, take screenshots."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        request_id = self._next_id
        await self._ws.send_message(
            orjson.dumps({"id": request_id, "method": method, "params": params}).decode()
        )
        while True:
            message = orjson.loads(await self._ws.get_message())
            if message.get("id") == request_id:
                if "error" in message:
                    raise DevToolsError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-able); page exceptions raise."""
        reply = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            raise DevToolsError(f"{expression!r} threw: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def screenshot(self, path: Path, *, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self.call("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"],
                              "scale": 1}
        reply = await self.call("Page.captureScreenshot", **params)
        await trio.Path(path).write_bytes(base64.b64decode(reply["data"]))
        return path

    def errors(self) -> list[str]:
        """Error-level log entries and console errors seen so far (CSP violations among them)."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"].get("text", ""))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str([arg.get("value") for arg in params.get("args", [])]))
            elif event["method"] == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"]))
        return found


async def _http_json(port: int, path: str) -> Any:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while True:  # Chromium keeps the connection open: read what Content-Length says
            head, found, body = data.partition(b"\r\n\r\n")
            if found:
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    return orjson.loads(body[: int(length.group(1))])
            chunk = await stream.receive_some(65536)
            if not chunk:
                return orjson.loads(body)
            data += chunk


async def _devtools_port(profile: Path, process: trio.Process) -> int:
    active = trio.Path(profile, "DevToolsActivePort")
    while True:
        if await active.exists():
            lines = (await active.read_text()).split()
            if lines:
                return int(lines[0])
        if process.returncode is not None:
            raise DevToolsError(f"chromium exited with {process.returncode} before listening")
        await trio.sleep(0.05)


@asynccontextmanager
async def open_page(profile: Path, *, width: int = 1366, height: int = 768) -> AsyncIterator[Page]:
    """A blank page of a fresh headless Chromium with a ``width`` x ``height`` viewport."""
    if CHROMIUM is None:
        raise DevToolsError("no chromium binary on PATH")
    await trio.Path(profile).mkdir(parents=True, exist_ok=True)
    # a reused profile holds the last run's port
    await trio.Path(profile, "DevToolsActivePort").unlink(missing_ok=True)
    args = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
            "about:blank"]
    with (profile / "chromium.log").open("wb") as log:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(trio.run_process, args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        check=False)
            )  # fmt: skip
            try:
                with trio.fail_after(20):
                    port = await _devtools_port(profile, process)
                    while True:
                        targets = await _http_json(port, "/json/list")
                        pages = [t for t in targets if t.get("type") == "page"]
                        if pages:
                            break
                        await trio.sleep(0.05)
                async with open_websocket_url(
                    pages[0]["webSocketDebuggerUrl"], max_message_size=64 * 1024 * 1024
                ) as ws:
                    page = Page(ws)
                    await page.call("Emulation.setDeviceMetricsOverride", width=width,
                                    height=height, deviceScaleFactor=1, mobile=False)
                    for domain in ("Page", "Runtime", "Log"):
                        await page.call(f"{domain}.enable")
                    yield page
            finally:
                nursery.cancel_scope.cancel()  # run_process terminates chromium
