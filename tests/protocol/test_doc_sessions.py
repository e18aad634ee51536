"""The example sessions of docs/protocol.md are real: replayed, on both transports, against a
daemon started from the shipped sched.toml, every reply is the one the page shows.

Values that differ from run to run (the page names them) are compared by JSON type only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from schedd.sdk import open_channel
from schedd.transport.channel import ChannelClosed
from tests.e2e_daemon import DaemonProcess
from tests.protocol.test_docs import DOC

#: (message type, field) whose value varies between runs: only its JSON type is compared.
VARYING = {("welcome", "instance"), ("registered", "epoch"), ("assign", "deadline")}
#: (message type, field) holding an object whose values vary: same keys, same value types.
VARYING_VALUES = {("done", "timings")}
#: The tokens the page's sessions present, accepted by the replayed daemon.
TOKENS = {"SCHEDD_AUTH__NODE_TOKENS": '["s3cret"]', "SCHEDD_AUTH__CLIENT_TOKENS": '["app-key"]'}


def sessions() -> list[list[str]]:
    """The `>`/`<` lines of each text block of "Example sessions": the node's, the client's."""
    section = DOC[DOC.index("## Example sessions"):DOC.index("### Writing a node: checklist")]
    blocks = re.findall(r"```text\n(.*?)```", section, re.DOTALL)
    return [[line for line in block.splitlines() if line.startswith(("> {", "< {"))]
            for block in blocks]


def same_shape(expected: dict[str, Any], got: dict[str, Any]) -> None:
    """``got`` is ``expected``, but for the :data:`VARYING` values."""
    kind = expected["type"]
    assert got.keys() == expected.keys(), (expected, got)
    for field, want in expected.items():
        have = got[field]
        if (kind, field) in VARYING:
            assert type(have) is type(want), (kind, field, have)
        elif (kind, field) in VARYING_VALUES:
            assert have.keys() == want.keys(), (kind, field, have)
            assert all(type(have[k]) is type(want[k]) for k in want), (kind, field, have)
        else:
            assert have == want, (kind, field, have, want)


async def replay(url: str, lines: list[str], registered: trio.Event) -> None:
    async with open_channel(url) as channel:
        for line in lines:
            if line.startswith(">"):
                await channel.send(line[2:].encode())
                continue
            expected = orjson.loads(line[2:])
            got = orjson.loads(await channel.receive())
            same_shape(expected, got)
            if got["type"] == "registered":
                registered.set()


def test_the_page_has_a_node_and_a_client_session() -> None:
    node, client = sessions()
    assert '"role":"node"' in node[0] and '"role":"client"' in client[0]


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_example_sessions_replay_against_the_shipped_configuration(
    tmp_path: Path, transport: str
) -> None:
    node, client = sessions()
    daemon = DaemonProcess.shipped(tmp_path, TOKENS)
    try:
        await daemon.start()
        url = daemon.ws if transport == "ws" else daemon.tcp
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                registered = trio.Event()
                nursery.start_soon(replay, url, node, registered)
                await registered.wait()  # the client's job is then assigned at once
                await replay(url, client, trio.Event())
    finally:
        daemon.stop()


@pytest.mark.parametrize("transport", ["ws", "tcp"])
async def test_no_hello_within_the_handshake_timeout_gets_the_documented_error(
    tmp_path: Path, transport: str
) -> None:
    daemon = DaemonProcess.shipped(tmp_path, {"SCHEDD_LIMITS__HANDSHAKE_TIMEOUT": "0.2"})
    try:
        await daemon.start()
        with trio.fail_after(10):
            async with open_channel(daemon.ws if transport == "ws" else daemon.tcp) as channel:
                error = orjson.loads(await channel.receive())
                assert (error["type"], error["code"]) == ("error", "E_ROLE")
                assert error["message"] == "no hello within 0.2s"
                with pytest.raises(ChannelClosed):
                    await channel.receive()
    finally:
        daemon.stop()
    assert "`E_ROLE` (`no hello within 5s`" in DOC
