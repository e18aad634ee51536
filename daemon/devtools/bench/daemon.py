"""The daemon under test: a ``schedd run`` subprocess on a throw-away redis-server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import trio

from schedd.devtools.bench.measure import SCHEDD
from schedd.devtools.redis_process import RedisServer, free_port

#: one ``--set``: (section, key, TOML value as written)
Setting = tuple[str, str, str]
#: sections the bench sets itself and ``--set`` may not change
_FIXED_SECTIONS: Final = ("redis", "plugins")


def parse_setting(text: str) -> Setting:
    """``SECTION.KEY=VALUE`` (VALUE in TOML: ``0.05``, ``true``, ``"text"``) as a
    :data:`Setting`. Raises ``ValueError`` saying what is wrong; whether the daemon knows the
    setting and accepts the value it says itself when it starts."""
    import tomllib

    name, equals, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    section, key, value = section.strip(), key.strip(), value.strip()
    if not equals or not dot or not section or not key or not value or "." in key:
        raise ValueError(f"expected SECTION.KEY=VALUE (nodes.heartbeat_flush=0.05), got {text!r}")
    if section in _FIXED_SECTIONS:
        raise ValueError(f"[{section}] is set by the bench itself; --set cannot change it")
    try:
        tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{name.strip()}: {value!r} is not a TOML value ({exc}); "
                         'quote text: key="text"') from None
    return section, key, value


class DaemonProcess:
    """A redis-server and a ``schedd run`` process using it, from a temporary sched.toml.

    :param settings: ``(section, key, TOML value)`` set in the generated configuration over
        the bench's own values (``schedd bench --set``; :func:`parse_setting`).
    :param redis: a redis-server the caller started and stops (the daemon then leaves it
        running on :meth:`stop`); by default one of its own.
    """

    def __init__(self, settings: Sequence[Setting] = (), *,
                 heartbeat_interval: float = 1.0, redis: RedisServer | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="schedd-bench-"))
        self.owns_redis = redis is None
        self.redis = redis if redis is not None else RedisServer()
        self.ws_port, self.tcp_port = free_port(), free_port()
        self.ws = f"ws://127.0.0.1:{self.ws_port}"
        self.tcp = f"tcp://127.0.0.1:{self.tcp_port}"
        self.heartbeat_interval = heartbeat_interval
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: trio.socket.SocketType | None = None
        self.log = self.dir / "daemon.log"

    def url(self, transport: str) -> str:
        return self.ws if transport == "ws" else self.tcp

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _config(self) -> str:
        # Limits meant for one abusive peer are raised: the bench's few client connections
        # carry the whole load on purpose.
        sections: dict[str, dict[str, str]] = {
            "schedd": {"log_level": '"warning"'},
            "redis": {"url": f'"{self.redis.url}"'},
            "nodes": {"heartbeat_interval": repr(self.heartbeat_interval)},
            "limits": {"max_inflight_submits": "100000", "max_messages_per_second": "1000000",
                       "idle_timeout": "600"},
            "jobs": {"queue_timeout": "120"},
        }
        for section, key, value in self.settings:
            sections.setdefault(section, {})[key] = value
        return "".join(
            f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
            for section, keys in sections.items()
        ) + (
            "[plugins]\nenabled = [\"transport_ws\", \"transport_tcp\"]\n"
            f"[plugins.transport_ws]\nlisten = \"127.0.0.1:{self.ws_port}\"\n"
            f"[plugins.transport_tcp]\nlisten = \"127.0.0.1:{self.tcp_port}\"\n"
        )

    async def start(self) -> DaemonProcess:
        self.redis.start()  # a no-op for a caller's running server
        config = self.dir / "sched.toml"
        config.write_text(self._config())
        notify_path = str(self.dir / "notify.sock")
        sock = self.notify = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(notify_path)
        # configured by the generated sched.toml only: an override from the caller's shell
        # (SCHEDD_REDIS__URL, say) must not point the bench daemon elsewhere, and the bench's
        # own variables (SCHEDD_BENCH_KEEP) are not settings the daemon would accept
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDD_")}
        env["NOTIFY_SOCKET"] = notify_path
        # A start-up step (not on a measured path): blocking calls are fine here.
        with open(self.log, "wb") as log:  # noqa: ASYNC230
            self.proc = subprocess.Popen(  # noqa: ASYNC220
                [SCHEDD, "run", "-c", str(config)], env=env, stdout=log,
                stderr=subprocess.STDOUT)
        with trio.fail_after(30):
            notes = ""
            while "READY=1" not in notes.split("\n"):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"schedd run exited {self.proc.returncode}:\n"
                                       + self.log.read_text(errors="replace")[-2000:])
                with trio.move_on_after(0.2):
                    notes += "\n" + (await sock.recv(4096)).decode()
        return self

    async def drain_notifications(self) -> None:
        """Read (and drop) the daemon's later notifications (STATUS, WATCHDOG) so that its
        sends do not fail; runs until cancelled."""
        assert self.notify is not None
        while True:
            await self.notify.recv(4096)

    def stop(self) -> None:
        """Kill the daemon and its own Redis; remove the temporary files (kept when
        ``SCHEDD_BENCH_KEEP`` is set)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()
        if self.owns_redis:
            self.redis.stop()
            shutil.rmtree(self.redis.dir, ignore_errors=True)
        if not os.environ.get("SCHEDD_BENCH_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    async def redis_command(self, *args: str) -> bytes:
        from schedd.store import open_store

        async with open_store(self.redis.url) as store:
            reply: bytes = await store.execute(*args)
            return reply

    async def script_holds(self, names: Sequence[str], seconds: float) -> list[float]:
        """How long Redis ran each call of one script (``names`` as for
        :meth:`count_script_calls`) during ``seconds``, in seconds, from its SLOWLOG (every
        command logged for the window): Redis runs nothing else meanwhile, so this is how long
        each call held it."""
        from schedd.store import open_store

        wanted = {name.encode() for name in names}
        async with open_store(self.redis.url) as store:
            await store.execute("CONFIG", "SET", "slowlog-max-len", "1000000")
            await store.execute("CONFIG", "SET", "slowlog-log-slower-than", "0")
            await store.execute("SLOWLOG", "RESET")
            try:
                await trio.sleep(seconds)
            finally:
                await store.execute("CONFIG", "SET", "slowlog-log-slower-than", "-1")
            entries = await store.execute("SLOWLOG", "GET", "-1")
            await store.execute("SLOWLOG", "RESET")
        # an entry: id, unix time, microseconds, [command, args...], client address, name
        return [entry[2] / 1e6 for entry in entries
                if len(entry[3]) > 1 and entry[3][1] in wanted]

    async def command_counts(self) -> dict[str, int]:
        """Calls of every command Redis ran so far (INFO commandstats: ``fcall``, ``evalsha``,
        ...; the one connection this opens adds a ``hello``/``ping`` and the ``info``)."""
        from schedd.devtools.redis_process import command_stats

        stats = command_stats(await self.redis_command("INFO", "commandstats"))
        return {name: int(stat["calls"]) for name, stat in stats.items()}

    def processes(self) -> dict[str, int]:
        """The pids of the daemon and of its redis-server."""
        assert self.redis.proc is not None
        return {"daemon": self.pid, "redis": self.redis.proc.pid}

    async def count_script_calls(self, names: Sequence[str], seconds: float) -> int:
        """Calls of one script (``FCALL`` by function name or ``EVALSHA`` by SHA: ``names``)
        during ``seconds``, counted from ``redis-cli MONITOR`` (a C process: parsing the stream
        here would load the bench process)."""
        monitor = subprocess.Popen(  # noqa: ASYNC220
            ["redis-cli", "-p", str(self.redis.port), "monitor"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert monitor.stdout is not None
        grep = subprocess.Popen(  # noqa: ASYNC220
            ["grep", "-c", "-F", *(f"-e\"{name}\"" for name in names)], stdin=monitor.stdout,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        monitor.stdout.close()
        try:
            await trio.sleep(seconds)
        finally:
            monitor.terminate()
            monitor.wait()
        out, _ = grep.communicate(timeout=10)
        return int(out.strip() or 0)


@asynccontextmanager
async def running_daemon(settings: Sequence[Setting] = (), *, heartbeat_interval: float = 1.0,
                         url: str | None = None, redis: RedisServer | None = None) -> Any:
    """A fresh daemon (or none when ``url`` names an existing one: yields None), on ``redis``
    (left running) or on a redis-server of its own."""
    if url is not None:
        yield None
        return
    daemon = DaemonProcess(settings, heartbeat_interval=heartbeat_interval, redis=redis)
    try:
        await daemon.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.drain_notifications)
            yield daemon
            nursery.cancel_scope.cancel()
    finally:
        daemon.stop()
