from __future__ import annotations

from typing import Any

import orjson
import trio

from schedd.core import Core, CoreSettings, Delivery, JobSpec
from schedd.store.base import Store


class Recorder:
    """Collects the deliveries a core hands to its instance."""

    def __init__(self) -> None:
        self.items: list[Delivery] = []
        self.changed = trio.Event()

    def __call__(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        self.changed.set()
        self.changed = trio.Event()

    def of(self, kind: type[Any]) -> list[Any]:
        return [d for d in self.items if isinstance(d, kind)]

    def clear(self) -> None:
        self.items.clear()

    async def wait_for(self, kind: type[Any], count: int = 1) -> list[Any]:
        with trio.fail_after(5):
            while len(self.of(kind)) < count:
                await self.changed.wait()
        return self.of(kind)


async def make_core(store: Store, instance: str = "A", **settings: Any) -> tuple[Core, Recorder]:
    recorder = Recorder()
    core = Core(store, CoreSettings(namespace="t", instance=instance, **settings), recorder)
    await core.start()
    return core, recorder


def spec(*pools: str, payload: Any = None, **kw: Any) -> JobSpec:
    return JobSpec(pools=pools, payload_json=orjson.dumps(payload).decode(), **kw)
