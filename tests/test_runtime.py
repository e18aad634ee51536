"""The collector settings of long-running processes: settle_gc and the settler service."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from schedd import runtime


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test process keeps a normal collector


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_gc_reclaims_frozen_cycles_and_freezes_survivors() -> None:
    garbage, kept = Cycle(), Cycle()
    gone = weakref.ref(garbage)
    gc.freeze()  # both frozen, as after an earlier settle
    del garbage  # a cycle: reference counting cannot free it, and no pass looks at it
    gc.collect()
    assert gone() is not None
    frozen, took = runtime.settle_gc()
    assert gone() is None
    assert frozen == gc.get_freeze_count() > 0 and took >= 0
    assert any(o is kept for o in gc.get_objects()) is False  # frozen: out of every generation
    gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())


class Fleet:
    """A connection count the test moves, and the settles it caused."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.opened = 0
        self.settles: list[tuple[float, int]] = []
        monkeypatch.setattr(runtime, "settle_gc", self._settle)

    def _settle(self) -> tuple[int, float]:
        self.settles.append((trio.current_time(), self.count))
        return 0, 0.0

    def connect(self, n: int) -> None:
        self.count += n
        self.opened += n

    def replace(self, n: int) -> None:
        self.opened += n  # as many closed as opened: the count does not move

    @asynccontextmanager
    async def settler(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.serve_gc_settler, lambda: self.count, lambda: self.opened)
            yield
            nursery.cancel_scope.cancel()


async def test_settler_waits_for_a_large_change_to_stop(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet(monkeypatch)
    async with fleet.settler():
        for _ in range(10):  # a ramp: 200 connections a second for 10 s
            fleet.connect(200)
            await trio.sleep(1)
        assert fleet.settles == []  # still connecting: no full pass yet
        await trio.sleep(7)
        assert [count for _, count in fleet.settles] == [2000]
        # the last 200 connected at t=9: at least `steady` (5 s) later, within two looks
        settled_at = fleet.settles[0][0]
        assert 9 + 5 <= settled_at <= 9 + 5 + 2
        fleet.connect(300)  # less than a fifth of 2,000: left to the collector
        await trio.sleep(20)
        assert len(fleet.settles) == 1
        fleet.connect(200)  # 500 more than at the last settle: a fifth of 2,000 and more
        await trio.sleep(20)
        assert [count for _, count in fleet.settles] == [2000, 2500]


async def test_settler_counts_replaced_connections_and_ignores_small_fleets(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock,
) -> None:
    fleet = Fleet(monkeypatch)
    async with fleet.settler():
        fleet.connect(runtime.SETTLE_MINIMUM - 1)
        await trio.sleep(30)
        assert fleet.settles == []  # a small process: the collector's own passes are short
        fleet.connect(1)
        await trio.sleep(10)
        assert len(fleet.settles) == 1
        for _ in range(20):  # churn: 600 connections replaced, the count unchanged
            fleet.replace(30)
            await trio.sleep(1)
        assert len(fleet.settles) == 1  # still churning
        await trio.sleep(10)
        assert [count for _, count in fleet.settles] == [500, 500]
