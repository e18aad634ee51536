"""A command or script the store refuses is a fault of the daemon, never "store unavailable".

Only replies with which a server says it cannot serve now (loading, busy, a replica...) are
``E_UNAVAILABLE`` (retry); any other refusal is ``E_INTERNAL`` and logged as an error, so a
bug is not hidden behind a message that tells the peer to retry an outage that is not there.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from schedd import protocol as p
from schedd.errors import StoreResponseError, error_from_reply
from tests.daemon.harness import running_daemon


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        ("ERR value is not an integer or out of range script: node_unavailable, on "
         "@user_function:1214.", p.E_INTERNAL),
        ("ERR user_script:12: attempt to compare nil with number", p.E_INTERNAL),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", p.E_INTERNAL),
        ("LOADING Redis is loading the dataset in memory", p.E_UNAVAILABLE),
        ("BUSY Redis is busy running a script", p.E_UNAVAILABLE),
        ("OOM command not allowed when used memory > 'maxmemory'. script: x", p.E_UNAVAILABLE),
        ("READONLY You can't write against a read only replica.", p.E_UNAVAILABLE),
        ("MASTERDOWN Link with MASTER is down", p.E_UNAVAILABLE),
    ],
)
async def test_a_store_refusal_is_unavailable_only_when_the_server_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reply: str, code: str,
) -> None:
    refusal = error_from_reply(reply)
    assert isinstance(refusal, StoreResponseError)

    async def refused(*_: Any, **__: Any) -> int:
        raise refusal

    async with running_daemon() as d:
        node, _ = await d.node("p")
        monkeypatch.setattr(d.app.core, "mark_unavailable", refused)
        with caplog.at_level(logging.WARNING, logger="schedd.session"):
            await node.send(p.Unavailable(service="s", ttl=1.0, ref="u"))
            error = await node.expect(p.Error)
            await node.send(p.Ping(ref="after"))
            assert (await node.expect(p.Pong)).ref == "after"  # the connection stays
    assert (error.code, error.ref) == (code, "u")
    [record] = [r for r in caplog.records if r.name == "schedd.session"]
    if code == p.E_INTERNAL:
        assert record.levelno == logging.ERROR and "store refused unavailable" in record.message
    else:
        assert record.levelno == logging.WARNING and "store unavailable" in record.message
