"""The public API plugins build on is pinned: changing it must be deliberate."""

from __future__ import annotations

import schedd


def test_public_api_is_pinned() -> None:
    assert sorted(schedd.__all__) == [
        "Channel",
        "ChannelClosed",
        "ConfigError",
        "CoreSettings",
        "JOB_STATES",
        "JobInfo",
        "JobSpec",
        "NodeInfo",
        "PoolInfo",
        "ProtocolError",
        "Queries",
        "SchedError",
        "ScriptError",
        "StoreError",
        "StoreUnavailable",
        "TERMINAL_STATES",
        "__version__",
        "hookimpl",
    ]
    for name in schedd.__all__:
        assert getattr(schedd, name) is not None


def test_plugin_api_is_pinned() -> None:
    import schedd.api

    assert sorted(schedd.api.__all__) == [
        "BadArgument",
        "Cancel",
        "Channel",
        "ChannelClosed",
        "ClientInfo",
        "ConfigError",
        "ConnectionHandler",
        "Corrections",
        "Daemon",
        "Fenced",
        "FinishedJob",
        "HeadSplitter",
        "InvalidField",
        "InvalidSetting",
        "JOB_STATES",
        "JobFilter",
        "JobInfo",
        "JobPage",
        "JobSpec",
        "JobSummary",
        "LISTEN_DOC",
        "LocalNode",
        "MAX_ID_LEN",
        "MAX_JOB_PAGE",
        "MAX_LIST",
        "MAX_REQUEUE",
        "MAX_RUNNING",
        "NodeInfo",
        "NodeNotFound",
        "NotYourNode",
        "Operators",
        "PoolInfo",
        "ProtocolError",
        "Queries",
        "RECEIVE_SIZE",
        "REQUEUE_STATES",
        "ReadinessHub",
        "RequeueFilter",
        "SchedError",
        "ScriptError",
        "Service",
        "StoreError",
        "StreamChannel",
        "Submitted",
        "TERMINAL_STATES",
        "TLS_CERT_DOC",
        "TLS_KEY_DOC",
        "UsageInfo",
        "WebSocketChannel",
        "check_tls_pair",
        "close_stream",
        "existing_file",
        "handshake_events",
        "handshake_timed_out",
        "hookimpl",
        "is_loopback",
        "parse_listen",
        "parse_time_bound",
        "peer_address",
        "read_when_ready",
        "serve_transport",
        "setting",
        "valid_listen",
    ]
    for name in schedd.api.__all__:
        assert getattr(schedd.api, name) is not None


def test_testing_helpers_are_pinned() -> None:
    import schedd.testing

    assert sorted(schedd.testing.__all__) == [
        "DaemonHarness",
        "FakeDaemon",
        "MemoryChannel",
        "Peer",
        "channel_pair",
        "running_daemon",
    ]
    for name in schedd.testing.__all__:
        assert getattr(schedd.testing, name) is not None


def test_the_facade_and_the_fake_are_whole_daemons() -> None:
    import inspect

    from schedd.api import Daemon
    from schedd.app import AppFacade
    from schedd.testing import FakeDaemon

    members = {name for name, _ in inspect.getmembers(Daemon) if not name.startswith("_")}
    for cls in (AppFacade, FakeDaemon):
        abstract: frozenset[str] = getattr(cls, "__abstractmethods__", frozenset())
        assert not abstract & members, f"{cls.__name__} leaves {sorted(abstract)} out"
        missing = sorted(name for name in members if name not in vars(cls))
        assert not missing, f"{cls.__name__} does not define {missing}"


def test_core_does_not_import_plugins() -> None:
    import ast
    from pathlib import Path

    root = Path(schedd.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith("schedd.plugins"), f"{path} imports {name}"
