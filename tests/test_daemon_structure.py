"""The daemon's modules import each other without a cycle, and none grows past the size rule."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "daemon"
PACKAGE = "schedd"

#: Most lines a module of the daemon may have.
MAX_LINES = 600
#: Modules allowed over MAX_LINES, each with why it is one piece.
TOO_BIG_ON_PURPOSE: dict[str, str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGE, *parts])


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports anywhere: at import time, inside a
    function, or for type checking only (two modules that know each other, even only for their
    types, are one piece). ``from pkg import name`` names ``pkg`` and ``pkg.name``."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    if not is_package:
                        anchor.pop()
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets |= {base, *(f"{base}.{a.name}" for a in node.names)}
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def cycles(graph: dict[str, set[str]], packages: set[str]) -> list[list[str]]:
    """The strongly connected parts of ``graph`` with more than one module that is not a
    package's ``__init__`` (a package re-exporting its own modules is not a design cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            part: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == module:
                    break
            if len([m for m in part if m not in packages]) > 1:
                found.append(sorted(part))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def packages() -> set[str]:
    return {name for name, path in modules().items() if path.name == "__init__.py"}


def test_the_daemon_has_no_import_cycle() -> None:
    found = cycles(import_graph(), packages())
    assert not found, "modules that import each other: " + "; ".join(
        " <-> ".join(part) for part in found)


def test_no_module_of_the_daemon_is_too_big() -> None:
    too_big = {
        str(path.relative_to(ROOT)): len(path.read_text().splitlines())
        for path in modules().values()
    }
    too_big = {path: n for path, n in too_big.items() if n > MAX_LINES}
    assert set(too_big) <= set(TOO_BIG_ON_PURPOSE), (
        f"over {MAX_LINES} lines: {too_big}; split them")
    stale = set(TOO_BIG_ON_PURPOSE) - set(too_big)
    assert not stale, f"no longer over {MAX_LINES} lines, take them off the list: {stale}"


def test_the_session_does_not_import_the_app() -> None:
    """The app builds sessions; a session knows its instance only as ``Host`` (a Protocol), so
    the two do not import each other, not even for type checking."""
    for path in sorted((ROOT / "session").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n == "schedd.app" or n.startswith("schedd.app.")], \
                path
