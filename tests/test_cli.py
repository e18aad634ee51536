from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import types
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd import cli
from schedd.cli import client as cli_client
from schedd.config import load_config
from schedd.hookspecs import hookimpl
from schedd.plugin_manager import PluginManager
from schedd.protocol import Done, ErrorInfo, Job

COMMANDS = ["run", "check-config", "nodes", "pools", "jobs", "job", "submit", "node", "drain",
            "undrain", "cancel", "requeue"]
HINT = "(is the daemon running? start it with: schedd run)"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No SCHEDD_* variables from the developer's shell, no ./sched.toml; logging restored."""
    import os

    for name in list(os.environ):
        if name.startswith("SCHEDD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def write(tmp_path: Path, text: str, name: str = "sched.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- help and usage ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_has_description_and_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--help"] if command else ["--help"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"  schedd {command}".rstrip() in out
    assert "--verbose" in out


def test_every_command_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out


def test_no_command_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: schedd" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["job"], "the following arguments are required: JOB_ID"),
        (["submit", "--pool", "p"], "the following arguments are required: PAYLOAD_JSON"),
        (["submit", "--pool", "p", "{not json"], "PAYLOAD_JSON is not valid JSON"),
        (["submit", "{}"], "--pool POOL or --requirements JSON"),
        (["submit", "--requirements", "[1]", "{}"], "expected a JSON object"),
        (["submit", "--requirements", "{x", "{}"], "--requirements is not valid JSON"),
        (["submit", "--pool", "p", "--timeout", "0", "{}"], "must be > 0"),
        (["submit", "--pool", "p", "--timeout", "soon", "{}"], "expected a number"),
        (["submit", "--pool", "p", "--priority", "high", "{}"], "invalid int value"),
        (["node"], "the following arguments are required: --pool"),
        (["node", "--pool", "p", "--capacity", "0"], "must be >= 1"),
        (["nodes", "--jsn"], "unrecognized arguments: --jsn"),
    ],
)
def test_argument_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_verbose_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["-v", "nodes"]).verbose == 1
    assert parser.parse_args(["nodes", "-vv"]).verbose == 2
    assert parser.parse_args(["nodes"]).verbose == 0


def test_urls_from_options_environment_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    assert cli._urls(parser.parse_args(["nodes"])) == ["ws://127.0.0.1:8765"]
    monkeypatch.setenv("SCHEDD_URL", "ws://a:1, tcp://b:2")
    assert cli._urls(parser.parse_args(["nodes"])) == ["ws://a:1", "tcp://b:2"]
    args = parser.parse_args(["nodes", "--url", "ws://c:3", "--url", "ws://d:4"])
    assert cli._urls(args) == ["ws://c:3", "ws://d:4"]


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDD_TOKEN", "s3cret")
    assert cli.build_parser().parse_args(["pools"]).token == "s3cret"
    assert cli.build_parser().parse_args(["pools", "--token", "x"]).token == "x"


# --- check-config -----------------------------------------------------------------------------


def test_check_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config"]) == 0
    assert (
        capsys.readouterr().out == "OK: built-in defaults, plugins: transport_ws, transport_tcp\n"
    )


def test_check_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[jobs]\nack_timeout = 2\n\n[plugins]\nenabled = []\n", "a.toml")
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert capsys.readouterr().out == f"OK: {path}, plugins: none\n"


def test_check_config_finds_sched_toml_and_names_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "[plugins]\nenabled = []\n")
    monkeypatch.setenv("SCHEDD_JOBS__ACK_TIMEOUT", "2")
    # The CLI's own variables are not settings: they must not fail the check.
    monkeypatch.setenv("SCHEDD_URL", "ws://127.0.0.1:1")
    monkeypatch.setenv("SCHEDD_TOKEN", "t")
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out == "OK: sched.toml, plugins: none, environment: SCHEDD_JOBS__ACK_TIMEOUT\n"


def test_check_config_path_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[plugins]\nenabled = []\n", "elsewhere.toml")
    monkeypatch.setenv("SCHEDD_CONFIG", str(path))
    assert cli.main(["check-config"]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {path},")


def test_check_config_reports_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        '[jobs]\nack_timeout = -1\nmax_attempts = "3"\n\n[redis]\nurl = 5\n\n'
        "[nodes]\nheartbeat_intervall = 1.0\n\n[plugins]\nenabled = []\n",
    )
    assert cli.main(["check-config", "-c", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == f"schedd: {path}: 4 configuration errors"
    assert sorted(lines[1:]) == [
        "$.jobs.ack_timeout: expected a number > 0, got -1",
        "$.jobs.max_attempts: expected an integer, got '3'",
        "$.nodes.heartbeat_intervall: unknown setting; did you mean 'heartbeat_interval'?",
        "$.redis.url: expected a string, got 5",
    ]


def test_check_config_reports_plugin_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, '[plugins]\nenabled = ["transport_wss", "nosuch"]\n')
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "2 configuration errors" in err
    assert "$.plugins.enabled: unknown plugin 'transport_wss'; did you mean 'transport_ws'?" in err
    assert "$.plugins.enabled: unknown plugin 'nosuch'" in err


def test_check_config_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[jobs]\nack_timeout = = 2\n")
    assert cli.main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "1 configuration error\n" in err
    assert f"{path}:2:" in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: cannot read" in capsys.readouterr().err


# --- run --------------------------------------------------------------------------------------


def fake_app(monkeypatch: pytest.MonkeyPatch) -> list[Path | None]:
    calls: list[Path | None] = []

    def run_daemon(config_path: Path | None = None) -> int:
        calls.append(config_path)
        return 3

    module = types.ModuleType("schedd.app")
    module.run_daemon = run_daemon  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "schedd.app", module)
    return calls


def test_run_hands_over_to_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_app(monkeypatch)
    assert cli.main(["run", "-c", str(tmp_path / "x.toml")]) == 3
    assert cli.main(["run"]) == 3
    assert calls == [tmp_path / "x.toml", None]


def test_run_verbose_forces_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    fake_app(monkeypatch)
    monkeypatch.setenv("SCHEDD_SCHEDD__LOG_LEVEL", "info")  # restored by monkeypatch
    cli.main(["run", "-v"])
    assert os.environ["SCHEDD_SCHEDD__LOG_LEVEL"] == "debug"


# --- connection failures (real SDK, nothing listening) ----------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["nodes"],
        ["pools", "--json"],
        ["jobs"],
        ["job", "j1"],
        ["submit", "--pool", "demo", '{"x": 1}'],
        ["submit", "--pool", "demo", "--no-wait", "{}"],
    ],
)
def test_unreachable_daemon(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{closed_port()}"
    assert cli.main([*argv, "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"schedd: cannot connect to {url}: connection refused {HINT}\n"


def test_unreachable_tcp_and_several_urls(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [f"tcp://127.0.0.1:{closed_port()}", f"ws://127.0.0.1:{closed_port()}"]
    monkeypatch.setenv("SCHEDD_URL", ",".join(urls))
    assert cli.main(["nodes"]) == 2
    err = capsys.readouterr().err
    assert err == f"schedd: cannot connect to {', '.join(urls)}: connection refused {HINT}\n"


def test_unreachable_node(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"tcp://127.0.0.1:{closed_port()}"
    assert cli.main(["node", "--pool", "demo", "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"schedd: cannot connect to {url}: connection refused {HINT}\n")


@pytest.mark.parametrize("command", [["nodes"], ["node", "--pool", "p"]])
def test_bad_url(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*command, "--url", "http://x"]) == 2
    assert "schedd: unsupported URL scheme in 'http://x'" in capsys.readouterr().err


def test_failure_mapping() -> None:
    from schedd.sdk.client import RequestFailed
    from schedd.sdk.connect import ConnectFailed

    urls = ["ws://h:1"]

    def message(exc: BaseException, connected: bool = True) -> str:
        with pytest.raises(cli.CommandError) as caught:
            cli._raise_command_error(exc, urls, connected=connected)
        return caught.value.message

    assert message(RequestFailed("E_AUTH", "wrong token"), connected=False) == (
        "cannot connect to ws://h:1: hello refused: E_AUTH: wrong token "
        "(check --token or $SCHEDD_TOKEN)"
    )
    assert message(RequestFailed("E_NO_JOB", "no such job")) == "E_NO_JOB: no such job"
    grouped = BaseExceptionGroup("tasks", [ConnectFailed("ws://h:1: refused")])
    assert message(grouped, connected=False) == "cannot connect to ws://h:1: refused"
    assert message(ValueError("priority: must be between -1000 and 1000")).startswith("priority")
    assert message(RuntimeError("odd"), connected=False) == (
        "cannot connect to ws://h:1: RuntimeError: odd"
    )
    with pytest.raises(RuntimeError, match="a bug"):
        cli._raise_command_error(RuntimeError("a bug"), urls, connected=True)
    with pytest.raises(KeyboardInterrupt):
        cli._raise_command_error(
            BaseExceptionGroup("g", [KeyboardInterrupt()]), urls, connected=True
        )


def test_connect_failure_messages() -> None:
    urls = ["ws://h:1"]
    refused = RuntimeError("no daemon")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert (
        cli._connect_failure(urls, refused)
        == f"cannot connect to ws://h:1: connection refused {HINT}"
    )
    unknown = RuntimeError("x")
    unknown.__context__ = socket.gaierror(-2, "Name or service not known")
    assert cli._connect_failure(urls, unknown) == (
        "cannot connect to ws://h:1: unknown host (Name or service not known)"
    )
    slow = RuntimeError("x")
    slow.__cause__ = trio.TooSlowError()
    assert cli._connect_failure(urls, slow) == f"cannot connect to ws://h:1: timed out {HINT}"
    unreachable = RuntimeError("x")
    unreachable.__cause__ = OSError(113, "No route to host")
    assert cli._connect_failure(urls, unreachable) == "cannot connect to ws://h:1: no route to host"
    assert (
        cli._connect_failure(urls, RuntimeError("bad URL")) == "cannot connect to ws://h:1: bad URL"
    )


# --- output, with the client faked ------------------------------------------------------------


class FakeHandle:
    def __init__(self, job_id: str, done: Done | None, duplicate: bool = False) -> None:
        self.job_id = job_id
        self.state = "queued"
        self.duplicate = duplicate
        self._done = done

    async def result(self) -> Done:
        if self._done is None:
            await trio.sleep_forever()
        assert self._done is not None
        return self._done


class FakeClient:
    def __init__(self, answers: dict[str, Any] | None = None, done: Done | None = None) -> None:
        self.answers = answers or {}
        self.done = done
        self.submitted: list[dict[str, Any]] = []

    async def query(self, what: str) -> dict[str, Any]:
        return self.answers[what]  # type: ignore[no-any-return]

    async def status(self, job_id: str) -> Job:
        return self.answers["job"]  # type: ignore[no-any-return]

    async def submit(self, payload: Any, **options: Any) -> FakeHandle:
        self.submitted.append({"payload": payload, **options})
        return FakeHandle(options.get("job_id") or "generated-1", self.done)


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()

    def run_client(
        args: argparse.Namespace,
        body: Callable[[FakeClient], Awaitable[Any]],
        *,
        reconnect: bool = False,
    ) -> Any:
        return trio.run(body, client)

    monkeypatch.setattr(cli_client, "_run_client", run_client)
    return client


NODES = {
    "nodes": [
        {
            "node_id": "gpu-box-7",
            "state": "online",
            "owner": "east-1",
            "epoch": 12,
            "capacity": 4,
            "used": 1,
            "pools": ["zh>en", "en>zh"],
            "load": 0.25,
            "last_heartbeat_ms": 1,
            "protocol": 1,
        },
        {
            "node_id": "n2",
            "state": "draining",
            "owner": "east-2",
            "epoch": 3,
            "capacity": 1,
            "used": 0,
            "pools": [],
            "load": 0,
            "last_heartbeat_ms": 0,
        },
    ]
}


def test_nodes_table(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.answers["nodes"] = NODES
    assert cli.main(["nodes"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == [
        "NODE",
        "STATE",
        "POOLS",
        "USED",
        "LOAD",
        "EPOCH",
        "OWNER",
        "PROTO",
        "LAST",
        "HEARTBEAT",
    ]
    assert first.split()[:8] == [
        "gpu-box-7",
        "online",
        "zh>en,en>zh",
        "1/4",
        "0.25",
        "12",
        "east-1",
        "1",
    ]
    assert first.endswith("s ago")
    # an answer without the protocol version (an older daemon) shows "-"
    assert second.split() == ["n2", "draining", "-", "0/1", "0.00", "3", "east-2", "-", "-"]
    # aligned columns
    assert header.index("STATE") == first.index("online") == second.index("draining")


def test_nodes_json_and_empty(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.answers["nodes"] = NODES
    assert cli.main(["nodes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == NODES
    fake_client.answers["nodes"] = {"nodes": []}
    assert cli.main(["nodes"]) == 0
    assert capsys.readouterr().out == "no nodes\n"


CLIENTS = {
    "clients": [
        {"instance": "east-1", "principal": "token:1a2b3c4d", "peer": "10.0.0.9:51000",
         "protocol": 1, "name": "web-7", "connected_ms": 1},
        {"instance": "east-2", "principal": "token:1a2b3c4d", "peer": "10.0.0.8:40000",
         "protocol": 1, "name": None, "connected_ms": 0},
    ]
}


def test_clients_table_json_and_empty(
    fake_client: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_client.answers["clients"] = CLIENTS
    assert cli.main(["clients"]) == 0
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["INSTANCE", "PRINCIPAL", "PEER", "PROTO", "NAME", "CONNECTED"]
    assert first.split()[:5] == ["east-1", "token:1a2b3c4d", "10.0.0.9:51000", "1", "web-7"]
    assert first.endswith("s ago")
    assert second.split() == ["east-2", "token:1a2b3c4d", "10.0.0.8:40000", "1", "-", "-"]
    assert cli.main(["clients", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == CLIENTS
    fake_client.answers["clients"] = {"clients": []}
    assert cli.main(["clients"]) == 0
    assert capsys.readouterr().out == "no clients\n"


def test_version_prints_package_and_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from schedd.protocol import PROTOCOL_VERSION

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == (
        f"schedd {version('schedd')} (protocol {PROTOCOL_VERSION})\n"
    )


def test_pools_table(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.answers["pools"] = {
        "pools": [
            {"pool": "zh>en", "members": {"a": 2, "b": 0}, "free_slots": 2, "queued": 0},
            {"pool": "fr>de", "members": {}, "free_slots": 0, "queued": 7},
        ]
    }
    assert cli.main(["pools"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["POOL", "NODES", "FREE", "QUEUED", "MEMBERS", "(node:free)"]
    assert lines[1].split() == ["zh>en", "2", "2", "0", "a:2", "b:0"]
    assert lines[2].split() == ["fr>de", "0", "0", "7", "-"]


def test_jobs_tables(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    stats = {
        "counts": {"queued": 2, "running": 1, "done": 5, "total:submitted": 9},
        "exclusions": {"unavailable:asr": 3},
        "instances": {"east-1": 4102444800000},
    }
    fake_client.answers["stats"] = stats
    assert cli.main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert "STATE    JOBS\nqueued   2\nrunning  1\ndone     5\n" in out
    assert "TOTAL      SINCE START\nsubmitted  9" in out
    assert "EXCLUDED BECAUSE  TIMES\nunavailable:asr   3" in out
    assert "INSTANCE  PRESENCE EXPIRES\neast-1    in " in out
    assert cli.main(["jobs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == stats


def test_jobs_when_empty(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.answers["stats"] = {"counts": {}, "exclusions": {}, "instances": {}}
    assert cli.main(["jobs"]) == 0
    assert capsys.readouterr().out == "no jobs\n\nno exclusions\n\nno instances\n"


def test_job_shows_its_trace_context(
    fake_client: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    fake_client.answers["job"] = Job(job_id="j1", state="queued", attempt=0, traceparent=tp)
    assert cli.main(["job", "j1"]) == 0
    assert f"traceparent  {tp}" in capsys.readouterr().out.splitlines()


def test_job(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.answers["job"] = Job(
        job_id="j1",
        state="running",
        attempt=2,
        node="gpu-box-7",
        info={
            "pools": ["zh>en"],
            "max_attempts": 3,
            "reason": "node lost",
            "timings": {"submitted": 1700000000000, "assigned": 0},
            "tried": ["n1"],
        },
    )
    assert cli.main(["job", "j1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "job        j1",
        "state      running",
        "attempt    2 of 3",
        "node       gpu-box-7",
        "pools      zh>en",
        "reason     node lost",
        "submitted  2023-11-14T22:13:20.000Z",
        "assigned   -",
        "tried      n1",
    ]
    assert cli.main(["job", "j1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "job_id": "j1",
        "state": "running",
        "attempt": 2,
        "node": "gpu-box-7",
        "info": fake_client.answers["job"].info,
        "traceparent": None,
        "tracestate": None,
    }


def test_submit_prints_done(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.done = Done(job_id="j9", state="done", ok=True, output={"echo": 1}, node="n1")
    argv = [
        "submit",
        "--pool",
        "a",
        "--pool",
        "b",
        "--job-id",
        "j9",
        "--session",
        "s1",
        "--priority",
        "5",
        "--requirements",
        '{"src": "zh"}',
        '{"x": 1}',
    ]
    assert cli.main(argv) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["type"] == "done"
    assert done["job_id"] == "j9"
    assert done["output"] == {"echo": 1}
    assert fake_client.submitted == [
        {
            "payload": {"x": 1},
            "pools": ("a", "b"),
            "requirements": {"src": "zh"},
            "job_id": "j9",
            "session_id": "s1",
            "priority": 5,
        }
    ]


@pytest.mark.parametrize("state", ["failed", "canceled", "timed_out"])
def test_submit_unsuccessful_job_exits_1(
    state: str, fake_client: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_client.done = Done(
        job_id="j1",
        state=state,  # type: ignore[arg-type]
        ok=False,
        error=ErrorInfo(code="E_X", message="no"),
    )
    assert cli.main(["submit", "--pool", "p", "null"]) == 1
    assert json.loads(capsys.readouterr().out)["state"] == state


def test_submit_no_wait(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["submit", "--pool", "p", "--no-wait", "[1, 2]"]) == 0
    assert capsys.readouterr().out == "generated-1\n"
    assert fake_client.submitted[0]["payload"] == [1, 2]


def test_submit_payload_from_stdin(
    fake_client: FakeClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(read=lambda: '{"from": "stdin"}'))
    assert cli.main(["submit", "--pool", "p", "--no-wait", "-"]) == 0
    assert fake_client.submitted[0]["payload"] == {"from": "stdin"}


def test_submit_wait_runs_out(fake_client: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    fake_client.done = None  # never done
    assert cli.main(["submit", "--pool", "p", "--timeout", "0.05", "{}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "schedd: job generated-1 not done within 0.05 s; see it with: schedd job generated-1\n"
    )


# --- plugin commands --------------------------------------------------------------------------


class DemoCommands:
    calls: list[argparse.Namespace] = []

    @hookimpl
    def schedd_add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        parser = subparsers.add_parser("demo-report", help="print a demo report")
        parser.add_argument("--pool", default="all")
        parser.set_defaults(func=self.run)

    def run(self, args: argparse.Namespace) -> int:
        self.calls.append(args)
        return 7


class BrokenCommands:
    @hookimpl
    def schedd_add_cli_commands(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        raise RuntimeError("broken plugin")


def manager_with(tmp_path: Path, **plugins: object) -> PluginManager:
    enabled = ", ".join(f'"{name}"' for name in plugins)
    config = load_config(write(tmp_path, f"[plugins]\nenabled = [{enabled}]\n"), {})
    return PluginManager.load(config, extra=plugins)


def test_plugin_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = DemoCommands()
    parser = cli.build_parser(manager_with(tmp_path, demo=demo))
    assert cli.dispatch(parser, ["-v", "demo-report", "--pool", "zh>en"]) == 7
    assert demo.calls[-1].pool == "zh>en"
    assert demo.calls[-1].verbose == 1
    assert cli.dispatch(parser, ["--help"]) == 0
    assert "demo-report" in capsys.readouterr().out


def test_broken_plugin_leaves_built_in_commands(tmp_path: Path) -> None:
    parser = cli.build_parser(manager_with(tmp_path, broken=BrokenCommands()))
    assert parser.parse_args(["nodes"]).func is cli.cmd_nodes


def test_unloadable_config_still_gives_built_in_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "[jobs]\nack_timeout = -1\n", "bad.toml")
    assert cli._plugins_for_commands(["nodes", "-c", str(bad)]) is None
    assert cli.main(["nodes", "--help"]) == 0
    # ... while check-config does report the very same failure.
    assert cli.main(["check-config", "-c", str(bad)]) == 2
    assert "$.jobs.ack_timeout" in capsys.readouterr().err


def test_operations_doc_covers_every_command() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    for command in COMMANDS:
        assert f"schedd {command}" in doc or f"`{command}`" in doc, command
    assert "schedd: cannot connect to ws://127.0.0.1:8765: connection refused" in doc
