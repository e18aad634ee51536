"""The suite's guard (tests/conftest.py): a test whose body a foreign cancel scope ends fails.

Without it pytest-trio counts such a test as passed, though what followed the cancel never ran.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CASES = '''
import trio
from hypothesis import given, settings, strategies as st


async def _cancelled_by_a_scope_that_has_exited() -> None:
    caught = None
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.cancel()
        try:
            await trio.sleep(1)
        except trio.Cancelled as exc:
            caught = exc
    assert caught is not None
    raise caught  # what a body cancelled by someone else's scope raises


async def test_cancelled() -> None:
    await _cancelled_by_a_scope_that_has_exited()


@settings(max_examples=1, database=None)
@given(st.integers())
async def test_cancelled_under_hypothesis(n: int) -> None:
    await _cancelled_by_a_scope_that_has_exited()


async def test_cancel_handled_inside() -> None:
    with trio.move_on_after(0):
        await trio.sleep(1)


async def test_plain(nursery) -> None:
    nursery.start_soon(trio.sleep, 0)
'''


def test_a_test_ended_by_a_foreign_cancel_fails(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(Path(__file__).with_name("conftest.py").read_text())
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*trio.Cancelled escaped the test*"])
    for name in ("test_cancelled", "test_cancelled_under_hypothesis"):
        result.stdout.fnmatch_lines([f"FAILED test_cases.py::{name} *"])
