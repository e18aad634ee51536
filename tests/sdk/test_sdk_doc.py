"""docs/sdk.md matches the SDK: every python block compiles, the three complete examples (trio,
asyncio, blocking) run as written against a real daemon, every exported name is in the doc's
table of names and nothing else is, and every option and public member of the SDK's classes is
named in the doc."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

import schedd.sdk
from schedd.sdk import (
    BlockingClient,
    BlockingJobHandle,
    BlockingOrderedSession,
    Client,
    JobContext,
    JobHandle,
    JobResult,
    Node,
    OrderedSession,
    RequestFailed,
)
from tests.sdk.daemon_thread import DaemonThread

DOC = (Path(__file__).resolve().parents[2] / "docs" / "sdk.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)
CODE_SPANS = set(re.findall(r"`([^`\n]+)`", DOC))
WORDS_IN_CODE = {word for text in (*CODE_SPANS, *BLOCKS) for word in re.findall(r"\w+", text)}
"""The words of the doc's code: its `spans` and its python blocks (whose arguments it comments)."""


def example(marker: str) -> dict[str, Any]:
    """The doc's python block containing ``marker``, run as a module (not as __main__)."""
    (code,) = [block for block in BLOCKS if marker in block]
    namespace: dict[str, Any] = {"__name__": "sdk_doc_example"}
    exec(compile(code, "docs/sdk.md", "exec"), namespace)
    return namespace


def test_every_python_block_compiles() -> None:
    assert len(BLOCKS) >= 8
    for block in BLOCKS:
        # fragments await at top level, as inside the async function they belong to
        compile(block, "docs/sdk.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_blocks_import_only_what_the_sdk_exports() -> None:
    imported = set()
    for block in BLOCKS:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and node.module == "schedd.sdk":
                imported |= {alias.name for alias in node.names}
    assert imported
    assert imported <= set(schedd.sdk.__all__)


def test_the_table_of_names_is_the_package_exports() -> None:
    table = DOC.split("## Choosing the event loop")[0]
    listed = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    assert listed == set(schedd.sdk.__all__)


def _parameters(func: Any) -> set[str]:
    return {name for name in inspect.signature(func).parameters if name not in ("self", "cls")}


@pytest.mark.parametrize("func", [Client.submit, Client.connect, Client.query, Client.admin,
                                  Node.__init__, Node.mark_unavailable, BlockingJobHandle.result,
                                  JobResult])
def test_every_option_is_documented(func: Any) -> None:
    missing = {name for name in _parameters(func) if name not in WORDS_IN_CODE}
    missing -= {"filters", "fields"}  # **kwargs, documented by their names
    assert not missing, f"{func.__qualname__}: {sorted(missing)} not in docs/sdk.md"


def test_every_submit_option_has_its_row() -> None:
    section = DOC.split("## Submitting jobs")[1].split("## Handles")[0]
    rows = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert rows == _parameters(Client.submit) - {"payload"}


def _public_members(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}


@pytest.mark.parametrize("cls", [Client, JobHandle, OrderedSession, BlockingClient,
                                 BlockingJobHandle, BlockingOrderedSession, Node])
def test_every_public_member_is_documented(cls: type) -> None:
    members = _public_members(cls) - _public_members(Exception)
    missing = {name for name in members if name not in WORDS_IN_CODE}
    assert not missing, f"{cls.__name__}: {sorted(missing)} not in docs/sdk.md"


def test_the_fields_of_request_failed_are_documented() -> None:
    fields = {*vars(RequestFailed("E_NO_JOB", "gone", job_id="j")), "retry_after"} - {"detail"}
    assert fields == {"code", "message", "job_id", "retry_after"}
    assert fields <= WORDS_IN_CODE


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_every_job_context_attribute_is_documented() -> None:
    job = JobContext(_NoNode(), job_id="j", attempt=1, payload=None, session_id=None,
                     deadline_ms=0)
    members = {name for name in dir(job) if not name.startswith("_")}
    assert members >= {"job_id", "attempt", "payload", "progress", "trace"}
    assert not {name for name in members if name not in WORDS_IN_CODE}


@pytest.mark.parametrize("anyio_backend", ["trio", "asyncio"])
@pytest.mark.anyio
async def test_every_public_instance_attribute_is_documented() -> None:
    async def handler(job: JobContext) -> None:
        return None

    for instance in (Client("tcp://127.0.0.1:1"), JobHandle(_NoClient(), "j"),
                     OrderedSession("s"), Node("tcp://127.0.0.1:1", handler)):
        attributes = {name for name in vars(instance) if not name.startswith("_")}
        assert attributes
        missing = {name for name in attributes if name not in WORDS_IN_CODE}
        assert not missing, f"{type(instance).__name__}: {sorted(missing)} not in docs/sdk.md"


class _NoClient:
    async def cancel(self, job_id: str) -> None:
        raise AssertionError("not cancelled in this test")


class _NoNode:
    async def _send_progress(self, job: JobContext, data: Any) -> None:
        raise AssertionError("not sent in this test")


# ----------------------------------------------------------------------------------------------
# The complete examples, against a real daemon.
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with DaemonThread("memory://", tmp_path) as running:
        yield running


EXPECTED = ["progress {'step': 'halfway'}", "done {'echo': {'hello': 1}}"]


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_the_trio_example(daemon: DaemonThread, capsys: pytest.CaptureFixture[str]) -> None:
    main = example("trio.run(main")["main"]
    with anyio.fail_after(20):
        await main(daemon.ws)
    assert capsys.readouterr().out.splitlines() == EXPECTED


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_the_asyncio_example(daemon: DaemonThread,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    main = example("asyncio.run(main")["main"]
    with anyio.fail_after(20):
        await main(daemon.tcp)
    assert capsys.readouterr().out.splitlines() == EXPECTED


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_the_blocking_example(daemon: DaemonThread,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    namespace = example("with BlockingClient(url)")
    echo = example("trio.run(main")["echo"]  # the node of the trio example serves the pool
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(Node(daemon.ws, echo, pools=["echo"]).run)
            await anyio.to_thread.run_sync(namespace["main"], daemon.tcp)
            tg.cancel_scope.cancel()
    assert capsys.readouterr().out.splitlines() == EXPECTED
