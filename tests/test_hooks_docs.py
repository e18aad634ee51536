"""docs/hooks.md documents every hook with the parameters it really has (after datasette's
tests/test_docs.py), and every hookspec's docstring follows the one template."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schedd import hookspecs

DOCS = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"
# A signature line in the docs: `schedd_node_pools(node_id, capabilities, declared_pools) -> ...`
SIGNATURE = re.compile(r"^(schedd_\w+)\(([^)]*)\)", re.MULTILINE)


def _specs() -> dict[str, Callable[..., Any]]:
    return {
        name: function
        for name, function in vars(hookspecs).items()
        if name.startswith("schedd_") and hasattr(function, f"{hookspecs.PROJECT}_spec")
    }


def _documented() -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for name, params in SIGNATURE.findall(DOCS.read_text(encoding="utf-8")):
        names = [param.split(":")[0].split("=")[0].strip() for param in params.split(",")]
        found.setdefault(name, []).append([param for param in names if param])
    return found


SPECS = _specs()


def test_there_are_hookspecs() -> None:
    assert len(SPECS) >= 9


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hook_is_documented_with_its_signature(name: str) -> None:
    documented = _documented()
    assert name in documented, f"{name} is missing from docs/hooks.md"
    expected = list(inspect.signature(SPECS[name]).parameters)
    for params in documented[name]:
        assert params == expected, f"docs/hooks.md documents {name}({', '.join(params)})"


def test_docs_document_no_stale_hooks() -> None:
    stale = sorted(set(_documented()) - set(SPECS))
    assert not stale, f"docs/hooks.md documents hooks that do not exist: {stale}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_hookspec_docstring_follows_the_template(name: str) -> None:
    function = SPECS[name]
    doc = inspect.getdoc(function) or ""
    summary, _, body = doc.partition("\n\n")
    assert summary and "\n" not in summary, f"{name}: one-line summary first"
    assert "Called" in body, f"{name}: say when it is called"
    for param in inspect.signature(function).parameters:
        assert f":param {param}:" in doc, f"{name}: :param {param}: missing"
    assert ":returns:" in doc, f"{name}: :returns: missing"
    firstresult = getattr(function, f"{hookspecs.PROJECT}_spec")["firstresult"]
    assert ("Stops at first non-None result." in doc) == firstresult, name
