"""The langset plugin: its hooks as pure functions in both modes, its settings, and jobs landing
on the right nodes through an in-process daemon on both store backends."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from schedd import protocol as p
from schedd.config import Config
from schedd.errors import ConfigError, ProtocolError
from schedd.plugin_manager import PluginManager
from schedd.plugins.langset import LangsetPlugin, LangsetSettings
from schedd.plugins.langset.pools import REGISTRY_LIMIT, SetRegistry, parse_set_key, set_key
from schedd.testing import FakeDaemon
from tests.daemon.harness import Daemon, Peer, running_daemon

ENABLED = {"SCHEDD_PLUGINS__ENABLED": '["langset"]'}
TIMEOUT = 10


def plugin(**settings: Any) -> LangsetPlugin:
    return LangsetPlugin(LangsetSettings(**settings))


def node_pools(
    lp: LangsetPlugin, declared: list[str] | None = None, **caps: Any
) -> list[str] | None:
    return lp.schedd_node_pools("n1", caps, declared or [])


def job_pools(
    lp: LangsetPlugin, declared: list[str] | None = None, **reqs: Any
) -> list[str] | None:
    return lp.schedd_job_pools(reqs, declared or [])


def bad_arg(call: Any, *args: Any, **kwargs: Any) -> str:
    """Call and return the message of the E_BAD_ARG protocol error it must raise."""
    with pytest.raises(ProtocolError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == "E_BAD_ARG"
    return caught.value.message


# =================================================================================================
# directed_pairs mode
# =================================================================================================


def test_directed_node_joins_every_pair_and_its_speech_pool() -> None:
    pools = node_pools(plugin(), asr_langs=["zh", "en"], semantic_langs=["en", "de", "zh", "en"],
                       tts_langs=["de"])
    assert pools == ["en>de", "en>de+tts", "en>zh", "zh>de", "zh>de+tts", "zh>en"]


def test_directed_node_without_tts_requirement_joins_no_speech_pools() -> None:
    pools = node_pools(plugin(require_tts_for_speech=False), asr_langs=["zh"],
                       semantic_langs=["en"], tts_langs=["en"])
    assert pools == ["zh>en"]


def test_directed_job_pools() -> None:
    lp = plugin()
    assert job_pools(lp, src_lang="zh", tgt_lang="en") == ["zh>en"]
    assert job_pools(lp, src_lang="zh", tgt_lang="en", speech=False) == ["zh>en"]
    assert job_pools(lp, src_lang="zh", tgt_lang="en", speech=True) == ["zh>en+tts"]
    # two-way: both directions, as given first
    assert job_pools(lp, lang_a="en", lang_b="zh") == ["en>zh", "zh>en"]
    assert job_pools(lp, lang_a="zh", lang_b="en", speech=True) == ["zh>en+tts", "en>zh+tts"]
    # speech without the TTS requirement: the plain pair
    lax = plugin(require_tts_for_speech=False)
    assert job_pools(lax, src_lang="zh", tgt_lang="en", speech=True) == ["zh>en"]


def test_auto_source_tries_the_allow_list_in_its_order() -> None:
    lp = plugin(languages=("ja", "en", "zh", "de"))
    assert job_pools(lp, src_lang="auto", tgt_lang="en") == ["ja>en", "zh>en", "de>en"]
    assert job_pools(lp, src_lang="auto", tgt_lang="de", speech=True) == [
        "ja>de+tts", "en>de+tts", "zh>de+tts"]


def test_auto_source_without_an_allow_list_is_refused() -> None:
    message = bad_arg(job_pools, plugin(), src_lang="auto", tgt_lang="en")
    assert "'auto'" in message and "languages" in message


def test_pool_prefix_applies_to_every_key() -> None:
    lp = plugin(pool_prefix="speech/")
    assert node_pools(lp, asr_langs=["zh"], semantic_langs=["en"], tts_langs=["en"]) == [
        "speech/zh>en", "speech/zh>en+tts"]
    assert job_pools(lp, lang_a="zh", lang_b="en") == ["speech/zh>en", "speech/en>zh"]


def test_declared_pools_are_kept_after_the_language_pools() -> None:
    lp = plugin()
    assert node_pools(lp, ["gpu", "zh>en"], asr_langs=["zh"], semantic_langs=["en"]) == [
        "zh>en", "gpu"]
    assert job_pools(lp, ["fallback"], src_lang="zh", tgt_lang="en") == ["zh>en", "fallback"]


def test_no_language_keys_means_no_opinion() -> None:
    lp = plugin()
    assert node_pools(lp, ["gpu"], services=["ocr"]) is None
    assert job_pools(lp, ["gpu"], speech=True, model="x") is None


def test_a_node_with_too_many_pairs_is_refused_with_a_hint() -> None:
    codes = ["ar", "de", "en", "es", "fr", "ja", "ko", "zh"]  # 8 * 7 pairs, twice: 112 > 64
    message = bad_arg(node_pools, plugin(), asr_langs=codes, semantic_langs=codes, tts_langs=codes)
    assert "112 pools" in message and "langset" in message
    # without speech pools the same node fits
    assert len(node_pools(plugin(require_tts_for_speech=False), asr_langs=codes,
                          semantic_langs=codes) or []) == 56


def test_candidates_are_capped_at_the_protocol_limit() -> None:
    codes = tuple(f"{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(80))
    lp = plugin(languages=codes)
    pools = job_pools(lp, src_lang="auto", tgt_lang=codes[-1]) or []
    assert len(pools) == p.MAX_LIST
    assert pools[0] == f"{codes[0]}>{codes[-1]}"


# =================================================================================================
# Bad input
# =================================================================================================


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"asr_langs": "zh", "semantic_langs": ["en"]},
         "capabilities.asr_langs must be an array of language codes, got a string"),
        ({"semantic_langs": {"en": True}},
         "capabilities.semantic_langs must be an array of language codes, got an object"),
        ({"tts_langs": None, "asr_langs": ["zh"]},
         "capabilities.tts_langs must be an array of language codes, got null"),
        ({"asr_langs": ["zh", "EN"]}, "capabilities.asr_langs[1]: 'EN' is not a language code"),
        ({"semantic_langs": ["english"]}, "capabilities.semantic_langs[0]: 'english' is not"),
        ({"asr_langs": [7]}, "capabilities.asr_langs[0]: 7 is not a language code"),
        ({"asr_langs": ["zh-"]}, "capabilities.asr_langs[0]: 'zh-' is not"),
        ({"asr_langs": ["en\n"]}, "capabilities.asr_langs[0]: 'en\\n' is not"),
    ],
)
@pytest.mark.parametrize("mode", ["directed_pairs", "langset"])
def test_bad_capabilities_are_refused(mode: str, caps: dict[str, Any], expected: str) -> None:
    assert bad_arg(node_pools, plugin(mode=mode), **caps).startswith(expected)


@pytest.mark.parametrize(
    ("reqs", "expected"),
    [
        ({"src_lang": "zh"}, "requirements.tgt_lang is required"),
        ({"tgt_lang": "en"}, "requirements.src_lang is required"),
        ({"lang_a": "zh"}, "requirements.lang_b is required"),
        ({"src_lang": "ZH", "tgt_lang": "en"}, "requirements.src_lang: 'ZH' is not a language"),
        ({"src_lang": "zh", "tgt_lang": ["en"]}, "requirements.tgt_lang: ['en'] is not"),
        ({"src_lang": "zh", "tgt_lang": "auto"}, "requirements.tgt_lang: 'auto' is not"),
        ({"lang_a": "auto", "lang_b": "en"}, "requirements.lang_a: 'auto' is not"),
        ({"src_lang": "en", "tgt_lang": "en"}, "requirements: src_lang and tgt_lang are both"),
        ({"lang_a": "en", "lang_b": "en"}, "requirements: lang_a and lang_b are both 'en'"),
        ({"src_lang": "zh", "tgt_lang": "en", "lang_a": "zh"}, "requirements: give src_lang"),
        ({"src_lang": "zh", "tgt_lang": "en", "speech": "yes"},
         "requirements.speech must be true or false, got a string"),
    ],
)
@pytest.mark.parametrize("mode", ["directed_pairs", "langset"])
def test_bad_requirements_are_refused(mode: str, reqs: dict[str, Any], expected: str) -> None:
    lp = plugin(mode=mode, known_sets=(("en", "zh"),) if mode == "langset" else ())
    assert bad_arg(job_pools, lp, **reqs).startswith(expected)


def test_valid_codes_with_subtags() -> None:
    lp = plugin()
    assert node_pools(lp, asr_langs=["zh-Hant", "sr-Latn-RS"], semantic_langs=["yue"]) == [
        "sr-Latn-RS>yue", "zh-Hant>yue"]


def test_allow_list_refuses_jobs_and_filters_nodes(caplog: pytest.LogCaptureFixture) -> None:
    lp = plugin(languages=("zh", "en"))
    assert bad_arg(job_pools, lp, src_lang="zh", tgt_lang="fr") == (
        "requirements.tgt_lang: 'fr' is not one of the languages this fleet serves (zh, en)")
    with caplog.at_level(logging.WARNING, "schedd.plugins.langset"):
        pools = node_pools(lp, asr_langs=["zh", "fr"], semantic_langs=["en", "fr", "ko"])
    assert pools == ["zh>en"]
    assert "node n1: asr_langs fr not in [plugins.langset] languages" in caplog.text
    assert "semantic_langs fr, ko not in" in caplog.text


# =================================================================================================
# langset mode
# =================================================================================================


def test_langset_node_joins_its_set_and_its_speech_pools() -> None:
    lp = plugin(mode="langset")
    pools = node_pools(lp, asr_langs=["zh"], semantic_langs=["zh", "en", "de", "en"],
                       tts_langs=["en", "ja"])
    assert pools == ["langset:de,en,zh", "langset:de,en,zh+tts:en"]
    assert node_pools(plugin(mode="langset", require_tts_for_speech=False),
                      semantic_langs=["zh", "en"], tts_langs=["en"]) == ["langset:en,zh"]
    # a set of one language translates nothing: only what the node declared itself
    assert node_pools(lp, ["gpu"], semantic_langs=["en"]) == ["gpu"]


def test_set_keys_parse_back_only_when_canonical() -> None:
    key = set_key("s/", ["zh-Hant", "pt-br", "en", "en"])
    assert key == "s/langset:en,pt-br,zh-Hant"
    assert parse_set_key("s/", key) == ("en", "pt-br", "zh-Hant")
    assert parse_set_key("s/", key + "+tts:en") == ("en", "pt-br", "zh-Hant")
    for other in ["langset:en,zh", "s/langset:zh,en", "s/langset:en", "s/langset:en,en,zh",
                  "s/langset:en,ZH", "s/langset:en,zh+tts:de", "s/en>zh", "s/langset:"]:
        assert parse_set_key("s/", other) is None, other


def test_superset_matching_prefers_the_smallest_set() -> None:
    lp = plugin(mode="langset", known_sets=(("de", "en", "ja", "zh"), ("en", "zh"), ("en", "ja")))
    lp.schedd_node_registered("n9", ["langset:de,en,zh", "langset:de,en,zh+tts:en", "gpu"])
    assert job_pools(lp, src_lang="zh", tgt_lang="en") == [
        "langset:en,zh", "langset:de,en,zh", "langset:de,en,ja,zh"]
    assert job_pools(lp, src_lang="de", tgt_lang="en", speech=True) == [
        "langset:de,en,zh+tts:en", "langset:de,en,ja,zh+tts:en"]
    # two-way: the set must hold both; speech needs TTS of either target, a>b first
    assert job_pools(lp, lang_a="ja", lang_b="en") == ["langset:en,ja", "langset:de,en,ja,zh"]
    assert job_pools(lp, lang_a="ja", lang_b="en", speech=True) == [
        "langset:en,ja+tts:en", "langset:en,ja+tts:ja",
        "langset:de,en,ja,zh+tts:en", "langset:de,en,ja,zh+tts:ja"]


def test_auto_source_prefers_the_largest_set() -> None:
    lp = plugin(mode="langset", known_sets=(("en", "zh"), ("de", "en", "zh"), ("de", "fr")))
    assert job_pools(lp, src_lang="auto", tgt_lang="en") == ["langset:de,en,zh", "langset:en,zh"]


def test_no_known_set_is_a_clear_refusal() -> None:
    lp = plugin(mode="langset", known_sets=(("en", "zh"),))
    message = bad_arg(job_pools, lp, src_lang="de", tgt_lang="en")
    assert message.startswith("no known language set serves de>en")
    assert "known_sets" in message


def test_the_registry_learns_only_in_langset_mode_and_only_set_keys() -> None:
    directed = plugin()
    directed.schedd_node_registered("n1", ["langset:en,zh"])
    assert directed.registry.sets() == ()
    lp = plugin(mode="langset", pool_prefix="x/")
    lp.schedd_node_registered("n1", ["langset:en,zh", "x/langset:de,en", "x/en>zh"])
    assert lp.registry.sets() == (("de", "en"),)
    assert job_pools(lp, src_lang="de", tgt_lang="en") == ["x/langset:de,en"]


def test_the_registry_is_bounded() -> None:
    registry = SetRegistry([("en", "zh")])
    codes = [f"{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(26 * 26)]
    keys = [set_key("", ["en", a, b]) for a in codes[:40] for b in codes[40:80]]
    learnt = registry.learn(keys)
    assert len(learnt) == REGISTRY_LIMIT and registry.full
    assert ("en", "zh") in registry and len(registry.sets()) == REGISTRY_LIMIT + 1


# =================================================================================================
# Settings and loading
# =================================================================================================


def load(**table: Any) -> PluginManager:
    return PluginManager.load(Config(plugins=("langset",), plugin_tables={"langset": table}))


def test_the_installed_entry_point_gives_each_daemon_its_own_plugin() -> None:
    first = load(mode="langset", known_sets=[["en", "zh"]])
    second = load()
    assert first.plugin_config("langset") == LangsetSettings(
        mode="langset", known_sets=(("en", "zh"),))
    assert second.plugin_config("langset") == LangsetSettings()
    # each plugin receives its settings through schedd_configure while plugins load, before
    # any service is asked for; the discovery service runs in langset mode only
    assert first.node_pools("n", {"semantic_langs": ["zh", "en"]}, []) == ["langset:en,zh"]
    assert second.node_pools("n", {"semantic_langs": ["zh", "en"]}, []) == []
    assert len(first.services(FakeDaemon())) == 1
    assert second.services(FakeDaemon()) == []


def test_settings_errors_are_reported_together_with_their_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        load(mode="pairs", languages=["en", "EN", "en"], pool_prefix="a b",
             known_sets=[["en"]], refresh_interval=-1, require_tts_for_speech="yes", colour=1)
    assert caught.value.errors == [
        "$.plugins.langset.mode: expected one of 'directed_pairs', 'langset', got 'pairs'",
        "$.plugins.langset.require_tts_for_speech: expected true or false, got 'yes'",
        "$.plugins.langset.languages: item 1: 'EN' is not a language code (expected 2-3 "
        "lower-case letters and optional -subtags, such as 'en', 'yue' or 'zh-Hant')",
        "$.plugins.langset.pool_prefix: expected up to 64 of A-Z a-z 0-9 _ . : / -, got 'a b'",
        "$.plugins.langset.known_sets: set 0: a language set needs at least 2 languages, "
        "got ['en']",
        "$.plugins.langset.refresh_interval: expected a number >= 0, got -1",
        "$.plugins.langset.colour: unknown setting; expected one of: mode, "
        "require_tts_for_speech, languages, pool_prefix, known_sets, refresh_interval",
    ]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"languages": ["en", "en"]}, "$.plugins.langset.languages: item 1: 'en' is listed twice"),
        ({"known_sets": [["en", "zh"]]},
         "$.plugins.langset: known_sets is only used by mode = 'langset'"),
        ({"mode": "langset", "languages": ["en", "zh"], "known_sets": [["en", "de", "fr"]]},
         "$.plugins.langset: known_sets[0]: 'de', 'fr' not in languages (en, zh)"),
    ],
)
def test_settings_that_contradict_each_other(table: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(**table)
    (error,) = caught.value.errors
    assert error.startswith(expected)


# =================================================================================================
# Through the daemon
# =================================================================================================


@asynccontextmanager
async def daemon(store_url: str, tmp_path: Path, table: str = "") -> AsyncIterator[Daemon]:
    toml = f"[plugins.langset]\n{table}" if table else ""
    async with running_daemon(store_url, toml=toml, tmp_path=tmp_path, **ENABLED) as d:
        yield d


async def register(d: Daemon, node_id: str, **caps: Any) -> tuple[Peer, p.Registered]:
    node = await d.connect("node")
    await node.send(p.Register(node_id=node_id, capacity=4, capabilities=caps))
    return node, await node.expect(p.Registered)


async def submit(client: Peer, **reqs: Any) -> p.Accepted:
    await client.send(p.Submit(requirements=reqs, ref="s"))
    accepted: p.Accepted = await client.expect(p.Accepted)
    return accepted


async def placed_on(client: Peer, job_id: str) -> str | None:
    await client.send(p.Status(job_id=job_id))
    job: p.Job = await client.expect(p.Job)
    return job.node


async def test_directed_jobs_land_on_the_nodes_that_serve_them(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with daemon(store_url, tmp_path, 'languages = ["zh", "en", "de"]\n') as d:
            zh_en, reg = await register(d, "zh-en", asr_langs=["zh"], semantic_langs=["en"])
            assert reg.pools == ["zh>en"]
            speaker, reg = await register(d, "speaker", asr_langs=["de", "en"],
                                          semantic_langs=["en", "zh"], tts_langs=["zh"])
            assert reg.pools == ["de>en", "de>zh", "de>zh+tts", "en>zh", "en>zh+tts"]
            client = await d.connect("client")
            cases: list[tuple[dict[str, Any], str, Any]] = [
                ({"src_lang": "zh", "tgt_lang": "en"}, "zh-en", zh_en),
                ({"src_lang": "de", "tgt_lang": "en"}, "speaker", speaker),
                ({"src_lang": "en", "tgt_lang": "zh", "speech": True}, "speaker", speaker),
                ({"lang_a": "en", "lang_b": "zh"}, "speaker", speaker),
                # auto: allow-list order, so zh>en (the zh-en node) before de>en
                ({"src_lang": "auto", "tgt_lang": "en"}, "zh-en", zh_en),
            ]
            for reqs, expected, node in cases:
                accepted = await submit(client, **reqs)
                assert accepted.state == "assigned", reqs
                assign = await node.expect(p.Assign)
                assert assign.job_id == accepted.job_id
                assert await placed_on(client, accepted.job_id) == expected, reqs
            # nobody has TTS for English: a speech job waits for such a node
            accepted = await submit(client, src_lang="zh", tgt_lang="en", speech=True)
            assert accepted.state == "queued"
            tts_en, reg = await register(d, "tts-en", asr_langs=["zh"], semantic_langs=["en"],
                                         tts_langs=["en"])
            assert (await tts_en.expect(p.Assign)).job_id == accepted.job_id


async def test_bad_requirements_and_capabilities_get_an_error_reply(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with daemon(store_url, tmp_path, 'languages = ["zh", "en"]\n') as d:
            client = await d.connect("client")
            bad: list[tuple[dict[str, Any], str]] = [
                ({"src_lang": "ZH", "tgt_lang": "en"}, "requirements.src_lang: 'ZH' is not"),
                ({"src_lang": "zh", "tgt_lang": "fr"}, "'fr' is not one of the languages"),
                ({"src_lang": "zh", "tgt_lang": "en", "speech": 1}, "requirements.speech"),
            ]
            for reqs, text in bad:
                await client.send(p.Submit(job_id="j1", requirements=reqs, ref="bad"))
                error = await client.expect(p.Error)
                assert (error.code, error.ref) == ("E_BAD_ARG", "bad"), error
                assert text in error.message
            await client.send(p.Status(job_id="j1", ref="st"))
            assert (await client.expect(p.Error)).code == "E_NO_JOB"  # nothing was stored

            node = await d.connect("node")
            await node.send(p.Register(node_id="n1", capacity=1, ref="r1",
                                       capabilities={"asr_langs": "zh", "semantic_langs": ["en"]}))
            error = await node.expect(p.Error)
            assert (error.code, error.ref) == ("E_BAD_ARG", "r1")
            assert error.message == (
                "capabilities.asr_langs must be an array of language codes, got a string")
            await client.send(p.Query(what="nodes"))
            assert (await client.expect(p.Answer)).data["nodes"] == []  # nothing was stored
            # the same connection may register properly afterwards
            caps = {"asr_langs": ["zh"], "semantic_langs": ["en"]}
            await node.send(p.Register(node_id="n1", capacity=1, capabilities=caps))
            assert (await node.expect(p.Registered)).pools == ["zh>en"]


async def test_a_node_that_loses_a_language_no_longer_gets_its_jobs(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with daemon(store_url, tmp_path) as d:
            old, reg = await register(d, "box", asr_langs=["zh", "en"], semantic_langs=["zh", "en"])
            assert reg.pools == ["en>zh", "zh>en"]
            # the box reconnects (same node id) without its Chinese ASR model
            new, reg = await register(d, "box", asr_langs=["en"], semantic_langs=["zh", "en"])
            assert reg.pools == ["en>zh"]
            assert await old.closed()  # the old connection no longer speaks for the box
            client = await d.connect("client")
            await client.send(p.Query(what="pools"))
            pools = {pool["pool"]: pool["members"] for pool in
                     (await client.expect(p.Answer)).data["pools"]}
            assert pools.get("en>zh") == {"box": 4}
            assert not pools.get("zh>en")
            lost = await submit(client, src_lang="zh", tgt_lang="en")
            assert lost.state == "queued"  # it never lands on the box
            kept = await submit(client, src_lang="en", tgt_lang="zh")
            assert kept.state == "assigned"
            assert (await new.expect(p.Assign)).job_id == kept.job_id
            # a node that does serve the lost pair takes the waiting job
            other, _ = await register(d, "other", asr_langs=["zh"], semantic_langs=["en"])
            assert (await other.expect(p.Assign)).job_id == lost.job_id
            assert await placed_on(client, lost.job_id) == "other"
            with trio.move_on_after(0.2):
                message = await new.recv()
                pytest.fail(f"the box got {message!r}")


async def test_langset_jobs_take_the_smallest_superset(store_url: str, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT):
        async with daemon(store_url, tmp_path, 'mode = "langset"\n') as d:
            big, reg = await register(d, "big", semantic_langs=["zh", "en", "de"],
                                      tts_langs=["en"], asr_langs=["zh", "en", "de"])
            assert reg.pools == ["langset:de,en,zh", "langset:de,en,zh+tts:en"]
            small, reg = await register(d, "small", semantic_langs=["en", "zh"])
            assert reg.pools == ["langset:en,zh"]
            client = await d.connect("client")
            routes: list[tuple[dict[str, Any], Any, str]] = [
                ({"src_lang": "zh", "tgt_lang": "en"}, small, "small"),
                ({"lang_a": "en", "lang_b": "zh"}, small, "small"),
                ({"src_lang": "de", "tgt_lang": "en"}, big, "big"),
                ({"src_lang": "zh", "tgt_lang": "en", "speech": True}, big, "big"),
                ({"src_lang": "auto", "tgt_lang": "zh"}, big, "big"),
            ]
            for reqs, node, name in routes:
                accepted = await submit(client, **reqs)
                assert (await node.expect(p.Assign)).job_id == accepted.job_id
                assert await placed_on(client, accepted.job_id) == name, reqs
            # small is full: a zh>en job overflows to the bigger set
            for _ in range(2):
                await submit(client, src_lang="zh", tgt_lang="en")
                await small.expect(p.Assign)
            accepted = await submit(client, src_lang="zh", tgt_lang="en")
            assert await placed_on(client, accepted.job_id) == "big"
            # a pair no known set serves is refused clearly
            await client.send(p.Submit(requirements={"src_lang": "ja", "tgt_lang": "en"}, ref="j"))
            error = await client.expect(p.Error)
            assert error.code == "E_BAD_ARG"
            assert "no known language set serves ja>en" in error.message


async def test_known_sets_let_jobs_queue_before_any_node(store_url: str, tmp_path: Path) -> None:
    table = 'mode = "langset"\nknown_sets = [["en", "ja", "ko"]]\nrefresh_interval = 0\n'
    with trio.fail_after(TIMEOUT):
        async with daemon(store_url, tmp_path, table) as d:
            client = await d.connect("client")
            accepted = await submit(client, src_lang="ja", tgt_lang="en")
            assert accepted.state == "queued"
            # a job waits in the pools named when it was submitted: the known set's
            node, reg = await register(d, "ja-node", semantic_langs=["ja", "en", "ko"])
            assert reg.pools == ["langset:en,ja,ko"]
            assert (await node.expect(p.Assign)).job_id == accepted.job_id


async def test_sets_registered_on_another_instance_are_learnt(
    store_url: str, tmp_path: Path
) -> None:
    # two instances over one store: memory://<name> is shared in-process
    url = f"memory://langset-{uuid.uuid4().hex[:8]}" if store_url == "memory://" else store_url
    table = 'mode = "langset"\nrefresh_interval = 0.05\n'
    with trio.fail_after(TIMEOUT):
        async with daemon(url, tmp_path, table) as a, daemon(url, tmp_path, table) as b:
            node, _ = await register(a, "n-a", semantic_langs=["en", "zh"])
            client = await b.connect("client")
            lp = b.app.plugins._pm.get_plugin("langset")
            assert isinstance(lp, LangsetPlugin)
            while ("en", "zh") not in lp.registry:
                await trio.sleep(0.01)
            accepted = await submit(client, src_lang="en", tgt_lang="zh")
            assert accepted.state == "assigned"
            assert (await node.expect(p.Assign)).job_id == accepted.job_id



def test_configure_keeps_learnt_sets_and_replaces_configured_ones() -> None:
    lp = plugin(mode="langset", known_sets=(("de", "en"),))
    lp.schedd_node_registered("n1", ["langset:en,zh"])
    lp.configure(LangsetSettings(mode="langset", known_sets=(("en", "ja"),)))
    assert lp.registry.sets() == (("en", "ja"), ("en", "zh"))
    assert lp.registry.learnt() == (("en", "zh"),)


async def test_languages_changed_by_heartbeat_move_the_node_atomically(
    store_url: str, tmp_path: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        async with daemon(store_url, tmp_path) as d:
            node, first = await register(d, "n1", asr_langs=["zh"], semantic_langs=["en"])
            assert first.pools == ["zh>en"]
            await node.send(p.Heartbeat(inflight=0, capabilities={
                "asr_langs": ["ja"], "semantic_langs": ["en"]}))
            moved = await node.expect(p.Registered)
            assert (moved.pools, moved.ref) == (["ja>en"], None)
            assert moved.epoch > first.epoch
            client = await d.connect("client")
            lost_pair = await submit(client, src_lang="zh", tgt_lang="en")
            assert lost_pair.state == "queued"  # never lands on a node that lost the pair
            new_pair = await submit(client, src_lang="ja", tgt_lang="en")
            assert new_pair.state == "assigned"
            assign = await node.expect(p.Assign)
            assert assign.job_id == new_pair.job_id
            # the node keeps working under its new epoch; an unchanged list moves nothing
            await node.send(p.Heartbeat(inflight=1, capabilities={
                "asr_langs": ["ja"], "semantic_langs": ["en"]}))
            await node.send(p.Result(job_id=assign.job_id, attempt=1, ok=True, output=1))
            done = await client.expect(p.Done)
            assert done.ok and done.job_id == new_pair.job_id
            await node.send(p.Ping(ref="quiet"))
            assert (await node.expect(p.Pong)).ref == "quiet"


async def test_sdk_node_set_capabilities_moves_its_pools(tmp_path: Path) -> None:
    from schedd.plugins.transport_tcp import serve as tcp_serve  # noqa: F401 - installed
    from schedd.sdk import JobContext, Node
    from tests.e2e_daemon import DaemonProcess

    async def echo(ctx: JobContext) -> Any:
        return ctx.payload

    proc = DaemonProcess(tmp_path, "memory://", plugins=("transport_tcp", "langset"))
    try:
        await proc.start()
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                node = Node(proc.tcp, echo, node_id="n1", heartbeat_interval=0.1,
                            capabilities={"asr_langs": ["zh"], "semantic_langs": ["en"]})
                await nursery.start(node.run)
                first = node.epoch
                node.set_capabilities({"asr_langs": ["de"], "semantic_langs": ["en"]})
                while node.epoch == first:
                    await trio.sleep(0.05)
                from schedd.sdk import Client

                async with Client.connect(proc.tcp) as client:
                    pools = await client.query("pools")
                    members = {pool["pool"]: pool["members"] for pool in pools["pools"]}
                    assert members.get("de>en") == {"n1": 1} and not members.get("zh>en")
                    handle = await client.submit("hi", requirements={"src_lang": "de",
                                                                     "tgt_lang": "en"})
                    assert (await handle.result()).output == "hi"
                nursery.cancel_scope.cancel()
    finally:
        proc.stop()
