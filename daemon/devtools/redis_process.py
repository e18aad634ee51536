"""Start throw-away ``redis-server`` processes on free loopback ports (tests and `schedd bench`).

Nothing here touches a Redis that the test suite did not start itself.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on now, never the same one twice in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


PORT_ARGS = ("--cluster-port", "--port")
_PROCESS_ID = re.compile(rb"\r\nprocess_id:(\d+)\r\n")


class PortTaken(RuntimeError):
    """redis-server could not bind its port (or cluster bus port)."""


class RedisServer:
    """One redis-server process; ``stop()`` then ``start()`` brings it back on the same port."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed")
        # a port picked here may be taken by another process before the server binds it: then
        # start() picks new ones (this one and any in PORT_ARGS of extra_args), once started never
        self.auto_ports = port is None
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.dir = Path(tempfile.mkdtemp(prefix="schedd-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (a no-op while it runs); returns once it answers on its port."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        for _ in range(4):
            try:
                self._start_once()
                self.auto_ports = False  # a restart keeps the port its clients know
                return self
            except PortTaken:
                if not self.auto_ports:
                    raise
            self.port = free_port()
            self.extra_args = [
                str(free_port()) if i > 0 and self.extra_args[i - 1] in PORT_ARGS else arg
                for i, arg in enumerate(self.extra_args)
            ]
        return self._start_once()

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-3:])

    def _answers(self, pid: int) -> bool:
        """Whether the server on our port is process ``pid``: another one answering there (the
        port was taken) must not pass for ours, which is about to fail to bind."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
            sock.sendall(b"INFO server\r\n")
            reply = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return False
                reply += chunk
                if reply.startswith(b"-"):
                    # -NOAUTH: up and wants a password (--requirepass); whose, it cannot say
                    return reply.startswith(b"-NOAUTH")
                found = _PROCESS_ID.search(reply)
                if found:
                    return int(found.group(1)) == pid

    def _start_once(self) -> RedisServer:
        assert REDIS_SERVER is not None
        if self.auto_ports:  # no line of an attempt on a taken port may be read as this one's
            (self.dir / "redis.log").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self._answers(self.proc.pid):
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                tail = self._log_tail()
                if "Address already in use" in tail:
                    raise PortTaken(tail)
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {self.proc.returncode}: {tail}"
                )
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def command_stats(info: bytes) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as {command: {calls, usec, usec_per_call}} (``fcall``, ...)."""
    out: dict[str, dict[str, float]] = {}
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            out[name[8:]] = {k: float(v) for k, v in (p.split("=") for p in rest.split(","))
                             if k in ("calls", "usec", "usec_per_call")}
    return out
