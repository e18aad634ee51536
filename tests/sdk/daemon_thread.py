"""The real daemon (trio) in a thread of its own, so that a test on any event loop (asyncio or
trio, through anyio's pytest plugin) can use the SDK against it over real sockets."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from types import TracebackType

import trio

from schedd.testing import running_daemon
from tests.plugins import TlsFiles

_READY_TIMEOUT = 30.0


class DaemonThread:
    """``with DaemonThread(store_url, tmp_path) as daemon:`` runs a daemon with the WebSocket and
    TCP transports on free loopback ports (``daemon.ws``, ``daemon.tcp``), over TLS with
    ``tls`` (``wss://``, ``tls://``), until the block ends."""

    def __init__(self, store_url: str, tmp_path: Path, *, tls: TlsFiles | None = None) -> None:
        files = f'tls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n' if tls is not None else ""
        self._toml = (
            "[nodes]\nheartbeat_interval = 0.2\ndisconnect_grace = 0.1\n"
            '[plugins]\nenabled = ["transport_ws", "transport_tcp"]\n'
            f'[plugins.transport_ws]\nlisten = "127.0.0.1:0"\n{files}'
            f'[plugins.transport_tcp]\nlisten = "127.0.0.1:0"\n{files}'
        )
        self._store_url = store_url
        self._tmp_path = tmp_path
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="daemon", daemon=True)
        self.ws = self.tcp = ""

    def __enter__(self) -> DaemonThread:
        self._thread.start()
        if not self._ready.wait(_READY_TIMEOUT) or self._error is not None:
            self.__exit__(None, None, None)
            raise AssertionError(f"the daemon did not start: {self._error!r}")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None and self._scope is not None:
            # From any thread, the test's event loop included (it need not be trio).
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(_READY_TIMEOUT)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported by __enter__ (or lost after the test)
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with running_daemon(self._store_url, self._toml, self._tmp_path) as harness:
                listeners = harness.app.listeners
                self.ws, self.tcp = listeners["transport_ws"], listeners["transport_tcp"]
                self._ready.set()
                await trio.sleep_forever()
