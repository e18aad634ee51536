"""typecheck/schedd is the import package `schedd` as mypy sees it.

setuptools maps `schedd` to daemon/, `schedd.plugins` to plugins/ and `schedd.lua` to lua/
(pyproject.toml); mypy cannot follow the editable install's import hook, so typecheck/schedd
holds a relative symlink for every entry of daemon/ plus plugins and lua. A module added to
daemon/ without its link would not be type-checked; this test says so.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "typecheck" / "schedd"


def test_the_typecheck_tree_links_every_entry_of_the_package() -> None:
    expected = {p.name: p for p in (ROOT / "daemon").iterdir() if p.name != "__pycache__"}
    expected |= {"plugins": ROOT / "plugins", "lua": ROOT / "lua"}
    links = {p.name: p for p in TREE.iterdir()}
    assert sorted(links) == sorted(expected), "typecheck/schedd does not mirror daemon/ " \
        "(add a link: ln -s ../../daemon/NAME typecheck/schedd/NAME)"
    for name, link in links.items():
        assert link.is_symlink(), f"{link} must be a symlink"
        assert not Path(link.readlink()).is_absolute(), f"{link} must be a relative symlink"
        assert link.resolve() == expected[name].resolve(), f"{link} points elsewhere"
