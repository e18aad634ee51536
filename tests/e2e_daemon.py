"""Start the real daemon (``schedd run``) as a process from a temporary sched.toml."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from schedd.devtools.redis_process import free_port

SCHEDD = str(Path(sys.executable).parent / "schedd")
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "sched.toml"


class DaemonProcess:
    """``schedd run -c <tmp>/sched.toml`` with its own NOTIFY_SOCKET, ports and log file.

    :meth:`shipped` runs the repository's ``sched.toml`` instead, its listeners moved to free
    ports by environment overrides."""

    def __init__(self, tmp_path: Path, store_url: str, *, extra: str = "",
                 plugins: tuple[str, ...] = ("transport_ws", "transport_tcp"),
                 env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="d-", dir=tmp_path))
        self.ws_port, self.tcp_port = free_port(), free_port()
        self.ws = f"ws://127.0.0.1:{self.ws_port}"
        self.tcp = f"tcp://127.0.0.1:{self.tcp_port}"
        self.config = self.dir / "sched.toml"
        enabled = ", ".join(f'"{p}"' for p in plugins)
        self.config.write_text(
            f'[redis]\nurl = "{store_url}"\n'
            "[nodes]\nheartbeat_interval = 0.2\ndisconnect_grace = 0.1\n"
            f"{extra}\n"
            f"[plugins]\nenabled = [{enabled}]\n"
            + (f'[plugins.transport_ws]\nlisten = "127.0.0.1:{self.ws_port}"\n'
               if "transport_ws" in plugins else "")
            + (f'[plugins.transport_tcp]\nlisten = "127.0.0.1:{self.tcp_port}"\n'
               if "transport_tcp" in plugins else "")
        )
        self.notify_path = str(self.dir / "notify.sock")
        self.log = self.dir / "daemon.log"
        self.env = {**os.environ, "NOTIFY_SOCKET": self.notify_path, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: trio.socket.SocketType | None = None
        self.notes: list[str] = []

    @classmethod
    def shipped(cls, tmp_path: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        """The shipped ``sched.toml`` as it is, but for its ports (and ``env``)."""
        proc = cls(tmp_path, "memory://")
        proc.config = SHIPPED_CONFIG
        proc.env.update({
            "SCHEDD_PLUGINS__TRANSPORT_WS__LISTEN": f"127.0.0.1:{proc.ws_port}",
            "SCHEDD_PLUGINS__TRANSPORT_TCP__LISTEN": f"127.0.0.1:{proc.tcp_port}",
            "SCHEDD_PLUGINS__UI__LISTEN": f"127.0.0.1:{free_port()}",
            **(env or {}),
        })
        return proc

    async def start(self) -> DaemonProcess:
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await self.sock.bind(self.notify_path)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([SCHEDD, "run", "-c", str(self.config)], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        await self.wait_for("READY=1", timeout=20)
        return self

    async def wait_for(self, line: str, timeout: float = 10) -> list[str]:
        assert self.sock is not None
        with trio.fail_after(timeout):
            while not any(line in n.split("\n") for n in self.notes):
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.output()}")
                with trio.move_on_after(0.2):
                    self.notes.append((await self.sock.recv(4096)).decode())
        return self.notes

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        with trio.fail_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        return self.proc.returncode

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
