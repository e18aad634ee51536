"""Quotas over the wire, on both transports: E_QUOTA and E_RATE_LIMITED refusals of `submit`,
and the `usage` query (a client sees its own principal only; an admin token sees every one)."""

from __future__ import annotations

from typing import Any

import pytest

from schedd import protocol as p
from schedd.principals import token_principal
from tests.daemon.harness import running_daemon
from tests.daemon.test_admin import ADMIN, TOKENS, Wire, ask, wire

QUOTAS = ('[quotas]\nmax_queued = 1\n'
          '[quotas.principals."' + token_principal("alice-secret") + '"]\n'
          'submit_rate = 0.001\nsubmit_burst = 2\nmax_queued = 5\n')


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def usage(peer: Wire) -> list[dict[str, Any]]:
    answer = await ask(peer, p.Query(what="usage", ref="u"))
    assert isinstance(answer, p.Answer) and answer.what == "usage"
    listed: list[dict[str, Any]] = answer.data["usage"]
    return listed


async def test_refusals_and_usage_over_the_wire(store_url: str, transport: str,
                                                tmp_path: object) -> None:
    async with running_daemon(store_url, QUOTAS, tmp_path=tmp_path, **TOKENS) as d:
        alice, welcome = await wire(d, transport, "client", "alice-secret")
        for i in range(2):
            got = await ask(alice, p.Submit(job_id=f"a{i}", pools=["p"], ref=f"s{i}"))
            assert isinstance(got, p.Accepted) and got.state == "queued"
        limited = await ask(alice, p.Submit(job_id="a2", pools=["p"], ref="s2"))
        assert isinstance(limited, p.Error) and limited.code == "E_RATE_LIMITED"
        assert limited.ref == "s2" and "retry_after_ms=" in limited.message
        # a duplicate takes no token and is answered as before
        again = await ask(alice, p.Submit(job_id="a0", pools=["p"], ref="d"))
        assert isinstance(again, p.Accepted) and again.duplicate

        admin, admin_welcome = await wire(d, transport, "client", ADMIN)
        ok = await ask(admin, p.Submit(job_id="b0", pools=["p"], ref="b0"))
        assert isinstance(ok, p.Accepted)
        full = await ask(admin, p.Submit(job_id="b1", pools=["p"], ref="b1"))
        assert isinstance(full, p.Error) and full.code == "E_QUOTA"
        assert full.message.startswith("max_queued:")

        (mine,) = await usage(alice)
        assert mine["principal"] == welcome.principal
        assert (mine["queued"], mine["in_flight"]) == (2, 0)
        assert mine["refused"] == {"E_RATE_LIMITED": 1}
        everyone = {u["principal"]: u for u in await usage(admin)}
        assert set(everyone) == {welcome.principal, admin_welcome.principal}
        assert everyone[admin_welcome.principal]["refused"] == {"E_QUOTA": 1}



async def test_usage_of_another_principal_cannot_be_asked(store_url: str, transport: str,
                                                          tmp_path: object) -> None:
    async with running_daemon(store_url, QUOTAS, tmp_path=tmp_path, **TOKENS) as d:
        alice, _ = await wire(d, transport, "client", "alice-secret")
        await alice.send(b'{"type": "query", "what": "usage", "principal": "token:00000000",'
                         b' "ref": "x"}')
        refused = p.decode(await alice.receive())
        assert isinstance(refused, p.Error) and refused.code == "E_BAD_FIELD"
        assert await usage(alice) == []  # it never submitted


async def test_pool_rates_of_the_configuration_reach_the_store(store_url: str,
                                                               tmp_path: object) -> None:
    toml = '[quotas.pool_rates]\n"tts" = 2.5\n'
    async with running_daemon(store_url, toml, tmp_path=tmp_path) as d:
        raw = await d.app.store.execute("HGET", d.app.core.keys.pool_limits, "tts")
        assert (raw.decode() if isinstance(raw, bytes) else raw) == "2.5 3"
