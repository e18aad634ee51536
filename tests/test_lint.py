"""The tree stays clean under the project's linters: ruff over everything, mypy strict on the
core and the built-in plugins, with defaults on the tests (the configuration is pyproject.toml).

Both run from the test extra's pinned ranges, so CI enforces what a contributor runs by hand:
``ruff check .`` and ``mypy``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_ruff_finds_nothing() -> None:
    proc = _run("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, f"ruff check . found:\n{proc.stdout}{proc.stderr}"


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    # a cache of its own: nothing written into the checkout, nothing shared with a run by hand
    proc = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert proc.returncode == 0, f"mypy found:\n{proc.stdout}{proc.stderr}"
    assert "Success: no issues found" in proc.stdout
