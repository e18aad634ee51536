"""Tests marked ``anyio`` run on anyio's pytest plugin, once per backend (``anyio_backend``),
not on pytest-trio, which trio mode (pyproject.toml) gives every other async test."""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)  # after pytest-trio has marked every async test "trio"
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("anyio") is not None:
            item.own_markers[:] = [mark for mark in item.own_markers if mark.name != "trio"]
