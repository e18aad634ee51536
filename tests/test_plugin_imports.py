"""The built-in plugins import only the public plugin API (``schedd.api``) and their own package.

Every file under ``plugins/`` is parsed; an import of any other ``schedd`` module fails (another
plugin's included: plugins meet through the API, e.g. ``Daemon.add_collector``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def _own_package(path: Path) -> str:
    relative = path.relative_to(PLUGINS)
    return f"schedd.plugins.{relative.parts[0].removesuffix('.py')}"


def _schedd_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``schedd`` import in ``path``, relative ones resolved."""
    package = ["schedd", "plugins", *path.relative_to(PLUGINS).parent.parts]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "schedd"]


def forbidden_imports(path: Path) -> list[str]:
    """The imports of ``path`` a plugin may not make."""
    own = _own_package(path)
    bad = []
    for line, name in _schedd_imports(path):
        if name == "schedd.api" or name.startswith("schedd.api."):
            continue
        if name == own or name.startswith(own + "."):
            continue
        bad.append(f"{path.relative_to(PLUGINS)}:{line}: {name}")
    return bad


FILES = sorted(str(path.relative_to(PLUGINS)) for path in PLUGINS.rglob("*.py"))


def test_every_plugin_file_is_checked() -> None:
    assert "reconcile/reconciler.py" in FILES and "ui/stats.py" in FILES


@pytest.mark.parametrize("relative", FILES)
def test_plugin_imports_only_the_public_api(relative: str) -> None:
    bad = forbidden_imports(PLUGINS / relative)
    assert not bad, "plugins may import only schedd.api and their own package:\n" + "\n".join(bad)


def test_the_check_sees_private_imports(tmp_path: Path) -> None:
    global PLUGINS
    saved, PLUGINS = PLUGINS, tmp_path
    try:
        plugin = tmp_path / "acme" / "core.py"
        plugin.parent.mkdir()
        plugin.write_text(
            "from schedd.api import Daemon\nfrom schedd.plugins.acme.x import y\nfrom . import z\n"
            "import schedd.session\nfrom schedd import protocol\n"
            "from ..ui import add_collector\nfrom schedd.plugins._listener import parse_listen\n"
        )
        assert forbidden_imports(plugin) == [
            "acme/core.py:4: schedd.session",
            "acme/core.py:5: schedd.protocol",
            "acme/core.py:6: schedd.plugins.ui.add_collector",
            "acme/core.py:7: schedd.plugins._listener.parse_listen",
        ]
    finally:
        PLUGINS = saved
