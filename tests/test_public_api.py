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
