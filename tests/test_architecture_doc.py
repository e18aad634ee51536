"""docs/architecture.md must describe every key, script and script error code that exists."""

from __future__ import annotations

import re
from pathlib import Path

from schedd.errors import SCRIPT_ERRORS
from schedd.store.keys import SCHEMA
from schedd.store.scripts import Scripts

DOC = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()


def test_every_key_is_in_the_schema_table() -> None:
    for name, (template, _) in SCHEMA.items():
        # a control character joining two ids is shown as its Unicode picture (U+241F for \x1f)
        template = "".join(chr(0x2400 + ord(c)) if ord(c) < 32 else c for c in template)
        shown = "`{ns}:" + template.replace("{}", "<id>") + "`"
        alt = "`{ns}:" + template.replace("{}", "<key>") + "`"
        alt2 = "`{ns}:" + template.replace("{}", "<instance>") + "`"
        assert shown in DOC or alt in DOC or alt2 in DOC, f"key {name} ({template}) undocumented"


def test_every_script_is_described() -> None:
    for name in Scripts().scripts:
        assert re.search(rf"^\| `{name}` \|", DOC, re.M), f"script {name} missing from docs"


def test_every_script_error_code_is_listed() -> None:
    for code in SCRIPT_ERRORS:
        assert f"`{code}`" in DOC


def test_every_script_has_a_complete_header() -> None:
    for name, script in Scripts().scripts.items():
        header = script.header()
        assert header.startswith(f"-- {name}:"), name
        assert "-- KEYS[1]" in header, name
        assert re.search(r"^-- ARGV\[1\]\s+caller instance", header, re.M), name
        assert "-- returns" in header and "-- errors" in header, name
        # every ARGV slot a script reads is documented in its header
        used = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", script.body.split("\n", len(
            header.splitlines()))[-1])}
        documented = {int(n) for n in re.findall(r"^-- ARGV\[(\d+)\]", header, re.M)}
        ranged = re.search(r"^-- ARGV\[(\d+)\.\.\]", header, re.M)
        if ranged:
            documented |= set(range(int(ranged.group(1)), 100))
        assert used <= documented, f"{name}: ARGV {sorted(used - documented)} undocumented"


def _layout_tree() -> set[str]:
    """The files the layout tree at the top of the document lists (``dir/`` lines nest by
    indentation, two spaces a level)."""
    block = DOC.split("```\n", 2)[1]
    listed: set[str] = set()
    folders: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        entry = line.split()[0]
        depth = (len(line) - len(line.lstrip(" "))) // 2
        del folders[depth:]
        if entry.endswith("/"):
            folders.append(entry)
        else:
            listed.add("".join(folders) + entry)
    return listed


def test_the_layout_tree_lists_every_module_of_the_daemon_and_the_plugins() -> None:
    root = Path(__file__).parent.parent
    on_disk = {str(path.relative_to(root)) for top in ("daemon", "plugins")
               for path in (root / top).rglob("*.py")}
    listed = {path for path in _layout_tree() if path.startswith(("daemon/", "plugins/"))}
    assert sorted(on_disk - listed) == [], "modules missing from the layout tree"
    assert sorted(listed - on_disk) == [], "the layout tree lists modules that do not exist"
