"""Pure functions from language capabilities and requirements to pool keys.

Rules of this module (the user-facing version is ``docs/plugins.md``, section "langset"):

* **Pool keys.** ``<prefix><src>><tgt>`` and ``<prefix><src>><tgt>+tts`` in ``directed_pairs``
  mode; ``<prefix>langset:<c1>,<c2>,…`` (codes sorted, de-duplicated) and
  ``<prefix>langset:<c1>,…+tts:<t>`` in ``langset`` mode. Codes may contain ``-``
  (``zh-Hant``), so the codes of a set are joined with ``,``, which no code contains: every set
  key parses back to exactly one set (:func:`parse_set_key`).
* **Speech pools.** With ``require_tts_for_speech`` a node that has TTS of a target language also
  joins the ``+tts`` pool next to the plain one, and a job with ``speech = true`` names only
  ``+tts`` pools. Without it nobody joins or names ``+tts`` pools.
* **Bad input is refused, never guessed.** Malformed codes and non-list capabilities raise
  :class:`~schedd.errors.ProtocolError` ``E_BAD_ARG`` naming the field; the session sends it back
  as an ``error``. A node's codes outside the allow-list are dropped (and reported to the caller);
  a job's are refused.
* **Bounded.** A node joins at most :data:`~schedd.protocol.MAX_LIST` pools (what ``registered``
  can carry) and a job names at most that many candidates, best first; a key is at most
  :data:`~schedd.protocol.MAX_ID_LEN` characters.
* **Order.** A node's pools are sorted (the same capabilities give the same list). A job's
  candidates are best first: the pair as asked (two-way: ``a>b`` then ``b>a``); ``auto`` tries
  sources in allow-list order; in ``langset`` mode smaller sets first, ties by key (``auto``:
  larger sets first, since the unknown source is likelier in a bigger set).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from schedd.api import MAX_ID_LEN, MAX_LIST, ProtocolError

from .settings import LangsetSettings, is_code

__all__ = [
    "AUTO",
    "CAPABILITIES",
    "E_BAD_ARG",
    "REQUIREMENTS",
    "SET_PREFIX",
    "TTS_SUFFIX",
    "Direction",
    "JobLanguages",
    "NodeLanguages",
    "SetRegistry",
    "job_pools",
    "node_pools",
    "pair_key",
    "parse_set_key",
    "read_job",
    "read_node",
    "set_key",
]

E_BAD_ARG: Final = "E_BAD_ARG"
AUTO: Final = "auto"
CAPABILITIES: Final = ("asr_langs", "semantic_langs", "tts_langs")
REQUIREMENTS: Final = ("src_lang", "tgt_lang", "lang_a", "lang_b")
SET_PREFIX: Final = "langset:"
TTS_SUFFIX: Final = "+tts"
_SET_TTS: Final = "+tts:"
#: Distinct language sets the registry remembers; beyond it new ones are ignored (and logged by
#: the caller), so nodes cannot grow an instance's memory without bound.
REGISTRY_LIMIT: Final = 1024


def _bad(message: str) -> ProtocolError:
    return ProtocolError(E_BAD_ARG, message)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _code_error(path: str, value: object) -> ProtocolError:
    return _bad(
        f"{path}: {value!r} is not a language code (expected 2-3 lower-case letters and "
        "optional -subtags, such as 'en', 'yue' or 'zh-Hant')"
    )


# -------------------------------------------------------------------------------------------------
# Pool keys
# -------------------------------------------------------------------------------------------------


def pair_key(prefix: str, src: str, tgt: str, *, tts: bool = False) -> str:
    """``<prefix><src>><tgt>``, plus ``+tts`` for the pair's speech pool."""
    return f"{prefix}{src}>{tgt}{TTS_SUFFIX if tts else ''}"


def set_key(prefix: str, codes: Iterable[str], *, tts: str | None = None) -> str:
    """``<prefix>langset:<sorted codes joined by ,>``, plus ``+tts:<tts>`` for a speech pool."""
    key = f"{prefix}{SET_PREFIX}{','.join(sorted(set(codes)))}"
    return f"{key}{_SET_TTS}{tts}" if tts is not None else key


def parse_set_key(prefix: str, key: str) -> tuple[str, ...] | None:
    """The language set of a set pool key (plain or ``+tts:``) made with ``prefix``, else None.

    Only canonical keys parse (codes valid, sorted, distinct, at least two), so a pool that some
    other plugin or a node named by hand is never mistaken for a language set.
    """
    head = f"{prefix}{SET_PREFIX}"
    if not key.startswith(head):
        return None
    body = key[len(head) :]
    body, tts_mark, tts = body.partition(_SET_TTS)
    codes = tuple(body.split(","))
    if len(codes) < 2 or not all(is_code(code) for code in codes):
        return None
    if list(codes) != sorted(set(codes)):
        return None
    if tts_mark and tts not in codes:
        return None
    return codes


# -------------------------------------------------------------------------------------------------
# Nodes
# -------------------------------------------------------------------------------------------------


@attrs.frozen
class NodeLanguages:
    """A node's language capabilities after validation (allow-list applied, de-duplicated)."""

    asr: tuple[str, ...] = ()
    semantic: tuple[str, ...] = ()
    tts: tuple[str, ...] = ()
    #: codes dropped because they are not in the allow-list, by capability
    dropped: dict[str, tuple[str, ...]] = attrs.field(factory=dict)


def _read_codes(
    capabilities: Mapping[str, Any], name: str, allowed: frozenset[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(kept, dropped) codes of one capability; missing means none."""
    if name not in capabilities:
        return (), ()
    value = capabilities[name]
    if not isinstance(value, list | tuple):
        raise _bad(
            f"capabilities.{name} must be an array of language codes, got {_json_type(value)}"
        )
    kept: list[str] = []
    dropped: list[str] = []
    for index, code in enumerate(value):
        if not is_code(code):
            raise _code_error(f"capabilities.{name}[{index}]", code)
        target = kept if not allowed or code in allowed else dropped
        if code not in target:
            target.append(code)
    return tuple(kept), tuple(dropped)


def read_node(
    capabilities: Mapping[str, Any], settings: LangsetSettings
) -> NodeLanguages | None:
    """A node's languages, or None when it declares none of :data:`CAPABILITIES`.

    :raises ProtocolError: ``E_BAD_ARG`` for a capability that is not an array of codes.
    """
    if not any(name in capabilities for name in CAPABILITIES):
        return None
    allowed = frozenset(settings.languages)
    found: dict[str, tuple[str, ...]] = {}
    dropped: dict[str, tuple[str, ...]] = {}
    for name in CAPABILITIES:
        found[name], lost = _read_codes(capabilities, name, allowed)
        if lost:
            dropped[name] = lost
    return NodeLanguages(
        asr=found["asr_langs"],
        semantic=found["semantic_langs"],
        tts=found["tts_langs"],
        dropped=dropped,
    )


def _directed_node_pools(langs: NodeLanguages, settings: LangsetSettings) -> list[str]:
    prefix = settings.pool_prefix
    tts = set(langs.tts) if settings.require_tts_for_speech else set()
    keys: list[str] = []
    for src in sorted(langs.asr):
        for tgt in sorted(langs.semantic):
            if src == tgt:
                continue
            keys.append(pair_key(prefix, src, tgt))
            if tgt in tts:
                keys.append(pair_key(prefix, src, tgt, tts=True))
    return keys


def _set_node_pools(langs: NodeLanguages, settings: LangsetSettings) -> list[str]:
    codes = sorted(set(langs.semantic))
    if len(codes) < 2:  # a set of one language translates nothing
        return []
    keys = [set_key(settings.pool_prefix, codes)]
    if settings.require_tts_for_speech:
        speech = sorted(set(langs.tts) & set(codes))
        keys += [set_key(settings.pool_prefix, codes, tts=code) for code in speech]
    return keys


def node_pools(
    langs: NodeLanguages, declared_pools: Sequence[str], settings: LangsetSettings
) -> list[str]:
    """The pools of a node: its language pools, then the pools it declared itself.

    :raises ProtocolError: ``E_BAD_ARG`` when the node would join more pools than ``registered``
        can carry, or a key would be longer than a pool name may be.
    """
    if settings.mode == "langset":
        keys = _set_node_pools(langs, settings)
    else:
        keys = _directed_node_pools(langs, settings)
    for pool in declared_pools:
        if pool not in keys:
            keys.append(pool)
    if len(keys) > MAX_LIST:
        hint = (
            "list fewer languages, or use mode = 'langset'"
            if settings.mode == "directed_pairs"
            else "list fewer languages"
        )
        raise _bad(
            f"these capabilities make {len(keys)} pools, more than the {MAX_LIST} a node may "
            f"join (mode {settings.mode!r}); {hint}"
        )
    for key in keys:
        if len(key) > MAX_ID_LEN:
            raise _bad(f"pool key {key[:40]!r}... is longer than {MAX_ID_LEN} characters")
    return keys


# -------------------------------------------------------------------------------------------------
# Jobs
# -------------------------------------------------------------------------------------------------


@attrs.frozen
class Direction:
    """One translation direction a job may take; ``src`` is :data:`AUTO` when unknown."""

    src: str
    tgt: str


@attrs.frozen
class JobLanguages:
    """A job's language requirements after validation."""

    directions: tuple[Direction, ...]
    speech: bool = False


def _read_code(
    requirements: Mapping[str, Any], name: str, settings: LangsetSettings, *, auto: bool = False
) -> str:
    if name not in requirements:
        raise _bad(f"requirements.{name} is required")
    value = requirements[name]
    if auto and value == AUTO:
        return AUTO
    if not is_code(value):
        raise _code_error(f"requirements.{name}", value)
    if settings.languages and value not in settings.languages:
        raise _bad(
            f"requirements.{name}: {value!r} is not one of the languages this fleet serves "
            f"({', '.join(settings.languages)})"
        )
    return str(value)


def read_job(requirements: Mapping[str, Any], settings: LangsetSettings) -> JobLanguages | None:
    """A job's languages, or None when its requirements name none of :data:`REQUIREMENTS`.

    :raises ProtocolError: ``E_BAD_ARG`` for a missing, malformed or refused language, a
        one-way and a two-way form mixed, or a non-boolean ``speech``.
    """
    one_way = "src_lang" in requirements or "tgt_lang" in requirements
    two_way = "lang_a" in requirements or "lang_b" in requirements
    if not one_way and not two_way:
        return None
    if one_way and two_way:
        raise _bad(
            "requirements: give src_lang and tgt_lang (one-way) or lang_a and lang_b "
            "(two-way), not both"
        )
    speech = requirements.get("speech", False)
    if not isinstance(speech, bool):
        raise _bad(f"requirements.speech must be true or false, got {_json_type(speech)}")
    if one_way:
        src = _read_code(requirements, "src_lang", settings, auto=True)
        tgt = _read_code(requirements, "tgt_lang", settings)
        if src == tgt:
            raise _bad(f"requirements: src_lang and tgt_lang are both {src!r}")
        return JobLanguages((Direction(src, tgt),), speech)
    a = _read_code(requirements, "lang_a", settings)
    b = _read_code(requirements, "lang_b", settings)
    if a == b:
        raise _bad(f"requirements: lang_a and lang_b are both {a!r}")
    return JobLanguages((Direction(a, b), Direction(b, a)), speech)


def _directed_job_pools(job: JobLanguages, settings: LangsetSettings) -> list[str]:
    tts = job.speech and settings.require_tts_for_speech
    keys: list[str] = []
    for direction in job.directions:
        if direction.src != AUTO:
            keys.append(pair_key(settings.pool_prefix, direction.src, direction.tgt, tts=tts))
            continue
        if not settings.languages:
            raise _bad(
                "requirements.src_lang: 'auto' needs the list of source languages to try, and "
                "none is configured (set [plugins.langset] languages), so give the source "
                "language"
            )
        keys += [
            pair_key(settings.pool_prefix, src, direction.tgt, tts=tts)
            for src in settings.languages
            if src != direction.tgt
        ]
    return keys


def _set_job_pools(
    job: JobLanguages, settings: LangsetSettings, known: Iterable[tuple[str, ...]]
) -> list[str]:
    tts = job.speech and settings.require_tts_for_speech
    ranked: list[tuple[int, int, str]] = []
    sets = list(known)
    for index, direction in enumerate(job.directions):
        for codes in sets:
            if direction.tgt not in codes:
                continue
            if direction.src == AUTO:
                rank = -len(codes)  # the unknown source is likelier in a bigger set
            elif direction.src in codes:
                rank = len(codes)  # keep big sets free for the jobs only they can serve
            else:
                continue
            key = set_key(settings.pool_prefix, codes, tts=direction.tgt if tts else None)
            ranked.append((rank, index, key))
    if not ranked:
        wanted = " or ".join(f"{d.src}>{d.tgt}" for d in job.directions)
        raise _bad(
            f"no known language set serves {wanted}: no node serving it has registered and "
            "[plugins.langset] known_sets lists none"
        )
    return [key for _rank, _index, key in sorted(ranked)]


def job_pools(
    job: JobLanguages,
    declared_pools: Sequence[str],
    settings: LangsetSettings,
    known_sets: Iterable[tuple[str, ...]] = (),
) -> list[str]:
    """A job's candidate pools, best first: its language pools, then the pools it declared.

    :param known_sets: the language sets that exist (``langset`` mode), each sorted.
    :raises ProtocolError: ``E_BAD_ARG`` when no pool can serve the job.
    """
    if settings.mode == "langset":
        keys = _set_job_pools(job, settings, known_sets)
    else:
        keys = _directed_job_pools(job, settings)
    result: list[str] = []
    for key in [*keys, *declared_pools]:
        if key not in result:
            result.append(key)
    return result[:MAX_LIST]


# -------------------------------------------------------------------------------------------------
# Which language sets exist
# -------------------------------------------------------------------------------------------------


class SetRegistry:
    """The language sets this instance knows of, as sorted tuples: configured ones first, then
    those learnt from pool keys (registrations here, and the pool list in Redis).

    Learnt sets are never forgotten: a set whose nodes are all offline still names a pool a job
    may queue in. At most :data:`REGISTRY_LIMIT` sets are learnt.
    """

    def __init__(self, configured: Iterable[Iterable[str]] = (), prefix: str = "") -> None:
        self.prefix = prefix
        # a dict, not a set: the order of configuration, then of learning, is kept
        self._sets: dict[tuple[str, ...], None] = {}
        for codes in configured:
            self._sets[tuple(sorted(set(codes)))] = None
        self._configured = len(self._sets)
        self.full = False

    def learn(self, pool_keys: Iterable[str]) -> list[tuple[str, ...]]:
        """Remember the sets of the set pools among ``pool_keys``; returns the new ones."""
        new: list[tuple[str, ...]] = []
        for key in pool_keys:
            codes = parse_set_key(self.prefix, key)
            if codes is None or codes in self._sets:
                continue
            if len(self._sets) - self._configured >= REGISTRY_LIMIT:
                self.full = True
                continue
            self._sets[codes] = None
            new.append(codes)
        return new

    def sets(self) -> tuple[tuple[str, ...], ...]:
        """Every known set."""
        return tuple(self._sets)

    def learnt(self) -> tuple[tuple[str, ...], ...]:
        """The sets learnt from pool keys (not configured)."""
        return tuple(self._sets)[self._configured :]

    def __contains__(self, codes: object) -> bool:
        return codes in self._sets
