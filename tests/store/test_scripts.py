"""The script registry: one Redis Function library, EVALSHA where functions cannot run, and
reloading whatever the server has lost."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from schedd.core import DoneDelivery
from schedd.errors import StoreResponseError
from schedd.store.base import Arg, Store
from schedd.store.scripts import Scripts, build_library
from tests.core.helpers import make_core, spec


class Refusing(Store):
    """A store that answers every FUNCTION and FCALL with ``reply`` and logs what it sent."""

    def __init__(self, inner: Store, reply: str) -> None:
        self.inner = inner
        self.reply = reply
        self.url = inner.url
        self.sent: list[str] = []

    async def execute(self, *args: Arg) -> Any:
        word = str(args[0]).upper()
        self.sent.append(word)
        if word in ("FUNCTION", "FCALL"):
            raise StoreResponseError(self.reply)
        return await self.inner.execute(*args)

    async def execute_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        return [await self.execute(*c) for c in commands]

    async def execute_blocking(self, *args: Arg) -> Any:
        return await self.inner.execute_blocking(*args)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _one_job(store: Store) -> None:
    core, rec = await make_core(store)
    await core.register_node(node_id="n1", capacity=1, pools=["p"])
    sub = await core.submit(spec("p"))
    assert sub.state == "assigned"
    await core.accept(sub.job_id, node_id="n1", attempt=1)
    await core.result(sub.job_id, node_id="n1", attempt=1, ok=True)
    assert rec.of(DoneDelivery)[0].state == "done"


async def test_scripts_run_as_functions(store: Store) -> None:
    core, _ = await make_core(store)
    scripts = core.scripts
    assert scripts.functions is True
    await _one_job(store)
    libraries = await store.execute("FUNCTION", "LIST", "LIBRARYNAME", scripts.library_name)
    assert len(libraries) == 1


@pytest.mark.parametrize(
    "reply",
    [
        "ERR unknown command 'FUNCTION', with args beginning with: 'LOAD'",  # Redis < 7
        "NOPERM User app has no permissions to run the 'function|load' command",  # ACL
    ],
)
async def test_without_functions_scripts_go_by_evalsha(store: Store, reply: str) -> None:
    refusing = Refusing(store, reply)
    await _one_job(refusing)
    assert "EVALSHA" in refusing.sent
    # the library is tried once at start; after that no call asks for functions again
    first_evalsha = refusing.sent.index("EVALSHA")
    assert "FCALL" not in refusing.sent[first_evalsha:]
    assert "FUNCTION" not in refusing.sent[first_evalsha:]


async def test_a_call_before_load_falls_back_too(store: Store) -> None:
    await store.execute("SCRIPT", "FLUSH")
    refusing = Refusing(store, "ERR unknown command 'FCALL'")
    scripts = Scripts()
    assert scripts.functions is None
    with pytest.raises(Exception, match="KEYS\\[1\\] carries no namespace tag"):
        await scripts.call(refusing, "job_follow", ["no-tag"], ["i", "j"])
    assert scripts.functions is False
    assert refusing.sent == ["FCALL", "FUNCTION", "EVALSHA", "SCRIPT", "EVALSHA"]


async def test_other_function_load_errors_are_raised(store: Store) -> None:
    refusing = Refusing(store, "ERR Error registering functions: something else")
    with pytest.raises(StoreResponseError, match="something else"):
        await Scripts().load_all(refusing)


async def test_a_second_load_keeps_the_library(store: Store) -> None:
    scripts = Scripts()
    await scripts.load_all(store)
    await scripts.load_all(store)  # 'already exists' is not an error
    assert scripts.functions is True


def test_each_version_of_the_code_has_its_own_library() -> None:
    name_a, source_a = build_library("local A = 1\n", {"s": "return 1\n"})
    name_b, source_b = build_library("local A = 2\n", {"s": "return 1\n"})
    assert name_a != name_b
    assert source_a.startswith(f"#!lua name={name_a}\n")
    assert f"redis.register_function('{name_a}_s'" in source_a
    assert name_b in source_b and name_a not in source_b


async def test_two_library_versions_coexist_in_one_redis(store: Store) -> None:
    # the helpers every call resets, as lib.lua declares them
    helpers = "local CALLER, LOCAL, EVENTS, FAIR_HOLD, FAIR_FROM\n"
    name_a, source_a = build_library(helpers + "local A = 1\n", {"s": "return A\n"})
    name_b, source_b = build_library(helpers + "local A = 2\n", {"s": "return A\n"})
    await store.execute("FUNCTION", "LOAD", source_a)
    await store.execute("FUNCTION", "LOAD", source_b)
    assert await store.execute("FCALL", f"{name_a}_s", 1, "{ns}:x") == 1
    assert await store.execute("FCALL", f"{name_b}_s", 1, "{ns}:x") == 2
