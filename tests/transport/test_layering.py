"""The transport layer's place in the tree: the sans-io protocol is free of trio, the transport
builds on it alone, and the daemon's serving side builds on the transport, not on the SDK."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at any depth (also under TYPE_CHECKING or in functions)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            yield node.module


def _files(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        path = ROOT / part
        found.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    assert found, parts
    return found


def _offending(files: list[Path], *prefixes: str) -> list[str]:
    return [f"{path.relative_to(ROOT)}: {name}" for path in files for name in _imports(path)
            if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)]


def test_the_sans_io_protocol_imports_no_event_loop() -> None:
    # the codec, TCP framing, the WebSocket frame splitter and handshake helpers: reusable by an
    # SDK on another event loop
    assert _offending(_files("daemon/protocol"), "trio", "asyncio", "schedd.transport",
                      "schedd.sdk") == []


def test_the_transport_builds_on_the_protocol_not_on_the_sdk_or_the_daemon() -> None:
    assert _offending(_files("daemon/transport"), "schedd.sdk", "schedd.app",
                      "schedd.session") == []


@pytest.mark.parametrize("part", ["daemon/app.py", "daemon/routes.py", "daemon/drain.py",
                                  "daemon/session", "plugins"])
def test_the_daemons_serving_side_does_not_import_the_sdk(part: str) -> None:
    assert _offending(_files(part), "schedd.sdk") == []


def test_the_plugin_api_offers_every_public_name_of_the_transport() -> None:
    """A transport plugin imports only schedd.api (tests/test_plugin_imports.py): the API
    re-exports what the transport layer offers plugins."""
    import schedd.api
    import schedd.transport

    assert set(schedd.transport.__all__) <= set(schedd.api.__all__)
    for name in schedd.transport.__all__:
        assert getattr(schedd.api, name) is getattr(schedd.transport, name)
