"""``[plugins.langset]``: the plugin's settings, and what a language code is.

This module owns the language-code rule used everywhere in the plugin: a code is two or three
lower-case letters followed by any number of ``-subtags`` of 2 to 8 letters or digits (``en``,
``yue``, ``zh-Hant``, ``pt-BR``, ``sr-Latn-RS``). ``auto`` is not a code; it is a value of a job's
``src_lang`` only. Every setting is checked while ``sched.toml`` is structured, so a bad value is
reported as ``$.plugins.langset.<setting>: …`` together with every other configuration error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

import attrs

from schedd.api import InvalidSetting, setting

__all__ = [
    "CODE_RE",
    "MODES",
    "LangsetSettings",
    "is_code",
]

CODE_RE: Final = re.compile(r"[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})*")
MODES: Final = ("directed_pairs", "langset")
# Pool keys end up in Redis key names and in `schedd pools`: no spaces, braces or the characters
# the plugin itself uses as separators (`>`, `+`, `,`).
_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.:/-]{0,64}")


def is_code(value: object) -> bool:
    """Whether ``value`` is a language code (a string matching :data:`CODE_RE` in full)."""
    return isinstance(value, str) and CODE_RE.fullmatch(value) is not None


def _code_problem(value: object) -> str:
    return (
        f"{value!r} is not a language code (expected 2-3 lower-case letters and optional "
        "-subtags, such as 'en', 'yue' or 'zh-Hant')"
    )


def _codes_problems(values: Iterable[Any]) -> str | None:
    """The first problem of a list of codes (bad code or duplicate), or None."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if not is_code(value):
            return f"item {index}: {_code_problem(value)}"
        if value in seen:
            return f"item {index}: {value!r} is listed twice"
        seen.add(value)
    return None


def _valid_mode(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in MODES:
        raise InvalidSetting(f"expected one of {', '.join(map(repr, MODES))}, got {value!r}")


def _valid_languages(
    _instance: Any, _attribute: attrs.Attribute[Any], value: tuple[str, ...]
) -> None:
    problem = _codes_problems(value)
    if problem:
        raise InvalidSetting(problem)


def _valid_prefix(_instance: Any, _attribute: attrs.Attribute[Any], value: str) -> None:
    if _PREFIX_RE.fullmatch(value) is None:
        raise InvalidSetting(f"expected up to 64 of A-Z a-z 0-9 _ . : / -, got {value!r}")


def _valid_known_sets(
    _instance: Any, _attribute: attrs.Attribute[Any], value: tuple[tuple[str, ...], ...]
) -> None:
    for index, codes in enumerate(value):
        problem = _codes_problems(codes)
        if problem:
            raise InvalidSetting(f"set {index}: {problem}")
        if len(codes) < 2:
            raise InvalidSetting(
                f"set {index}: a language set needs at least 2 languages, got {list(codes)!r}"
            )


def _valid_interval(_instance: Any, _attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:  # written this way round so NaN fails
        raise InvalidSetting(f"expected a number >= 0, got {value:g}")


@attrs.frozen
class LangsetSettings:
    """``[plugins.langset]``: how language capabilities become pools (see docs/plugins.md)."""

    mode: str = setting(
        "directed_pairs",
        "directed_pairs (one pool per src>tgt) | langset (one pool per semantic language set)",
        _valid_mode,
    )
    require_tts_for_speech: bool = setting(
        True, "a job with speech = true runs only on nodes with TTS of its target language"
    )
    languages: tuple[str, ...] = setting(
        (),
        "allow-list of language codes, in order of preference; empty: any valid code "
        "(src_lang = 'auto' in directed_pairs mode needs it)",
        _valid_languages,
    )
    pool_prefix: str = setting(
        "", "text put before every pool key this plugin makes (e.g. 'speech/')", _valid_prefix
    )
    known_sets: tuple[tuple[str, ...], ...] = setting(
        (),
        "langset mode: language sets that exist in the fleet, known to every instance "
        "(e.g. [['de', 'en', 'zh'], ['en', 'ja']])",
        _valid_known_sets,
    )
    refresh_interval: float = setting(
        5.0,
        "langset mode: seconds between reads of the pool list in Redis to learn language sets "
        "of nodes registered on other instances; 0 turns it off",
        _valid_interval,
    )

    def __attrs_post_init__(self) -> None:
        if self.known_sets and self.mode != "langset":
            raise InvalidSetting(
                f"known_sets is only used by mode = 'langset' (mode is {self.mode!r}); "
                "remove it or set mode = 'langset'"
            )
        if self.languages:
            allowed = set(self.languages)
            for index, codes in enumerate(self.known_sets):
                outside = [code for code in codes if code not in allowed]
                if outside:
                    raise InvalidSetting(
                        f"known_sets[{index}]: {', '.join(map(repr, outside))} not in languages "
                        f"({', '.join(self.languages)})"
                    )
