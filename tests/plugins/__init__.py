"""Helpers for the transport tests: a fake App facade and throw-away TLS certificates."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio

from schedd.admission import Admission
from schedd.errors import ProtocolError
from schedd.testing import FakeDaemon
from schedd.transport.channel import Channel, ChannelClosed
from schedd.transport.readiness import ReadinessHub


@attrs.define
class FakeLimits:
    max_frame: int = 4096
    handshake_timeout: float = 5.0
    max_attachment: int = 4096
    max_attachments: int = 8192
    # schedd.admission's, as [limits] has them by default
    max_connections: int = 20000
    max_connections_per_address: int = 12000
    max_pending_handshakes: int = 1000
    max_pending_handshakes_per_address: int = 256
    max_failed_handshakes: int = 10
    failed_handshake_window: float = 60.0
    failed_handshake_backoff: float = 60.0


class FakeApp(FakeDaemon):
    """The public fake daemon, with the members a transport uses.

    ``serve_channel`` echoes every message (``b"crash"`` makes it raise, to prove the listener
    survives a broken handler), and on a ``ProtocolError`` records it, sends an ``error`` message
    and returns, as the session does.
    """

    def __init__(
        self,
        settings: dict[str, object],
        *,
        tokens: bool = False,
        max_frame: int = 4096,
        handshake_timeout: float = 5.0,
    ) -> None:
        super().__init__(settings, tokens=tokens)
        self.fake_limits = FakeLimits(max_frame, handshake_timeout)
        self.peers: list[str] = []
        self.received: list[bytes | str] = []
        self.errors: list[ProtocolError] = []
        self.closed: list[str] = []
        self.served = 0
        self._changed = trio.Event()
        #: started by start(), as the daemon runs it (the TCP transport reads through it)
        self.hub = ReadinessHub()
        self.fake_admission = Admission(lambda: self.fake_limits)  # type: ignore[arg-type,return-value]

    @property
    def limits(self) -> Any:
        return self.fake_limits

    @property
    def readiness(self) -> ReadinessHub:
        return self.hub

    @property
    def admission(self) -> Admission:
        return self.fake_admission

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; it is checked whenever serve_channel records."""
        while not condition():
            await self._changed.wait()

    def _record(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def serve_channel(self, channel: Channel) -> None:
        self.served += 1
        self.peers.append(channel.peer)
        try:
            while True:
                message = await channel.receive()
                self.received.append(message)
                self._record()
                if message in (b"crash", "crash"):
                    raise RuntimeError("a bug in the session")
                await channel.send(message.encode() if isinstance(message, str) else message)
        except ProtocolError as exc:
            self.errors.append(exc)
            self._record()
            error = {"type": "error", "code": exc.code, "message": exc.message}
            with contextlib.suppress(ChannelClosed):  # the transport may have closed already
                await channel.send(orjson.dumps(error))
        except ChannelClosed as exc:
            self.closed.append(str(exc))
            self._record()


async def start(nursery: trio.Nursery, serve: Any, app: FakeApp, plugin: str) -> str:
    """Start a transport service as the daemon does (after the readiness hub); return the URL
    it reported."""
    await nursery.start(app.readiness.serve)
    await nursery.start(serve, app)
    return app.urls[plugin]


@attrs.frozen
class TlsFiles:
    cert: str
    key: str
    client_context: ssl.SSLContext


def make_tls_files(directory: Path) -> TlsFiles:
    """A certificate for 127.0.0.1 and localhost, and a client context that trusts it."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        import trustme
    except ImportError:
        trustme = None  # type: ignore[assignment]
    if trustme is not None:
        ca = trustme.CA()
        issued = ca.issue_cert("127.0.0.1", "localhost")
        cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
        context = ssl.create_default_context()
        ca.configure_trust(context)
        return TlsFiles(str(cert), str(key), context)
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("neither trustme nor openssl is installed to make a test certificate")
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return TlsFiles(str(cert), str(key), ssl.create_default_context(cafile=str(cert)))
