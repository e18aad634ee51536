"""The validation vocabulary of the settings: :func:`setting`, :class:`InvalidSetting` and the
validators the sections (and plugins' settings classes) are built from."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

import attrs

from schedd.protocol import MAX_SECONDS


class InvalidSetting(ValueError):
    """A value is wrong; the message is shown to the user as it is, after the setting's path."""


def _show(value: object) -> str:
    """A value as the user wrote it in TOML terms (``-1`` rather than ``-1.0``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _kind(attribute: attrs.Attribute[Any]) -> str:
    return "an integer" if attribute.type in (int, "int", int | None, "int | None") else "a number"


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _greater_than(bound: float) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value > bound:  # written this way round so NaN fails
            raise InvalidSetting(
                f"expected {_kind(attribute)} > {_show(bound)}, got {_show(value)}"
            )

    return check


def _at_least(bound: float) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value >= bound:
            raise InvalidSetting(
                f"expected {_kind(attribute)} >= {_show(bound)}, got {_show(value)}"
            )

    return check


def _between(low: float, high: float) -> _Validator:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not low <= value <= high:
            raise InvalidSetting(
                f"expected {_kind(attribute)} between {_show(low)} and {_show(high)}, "
                f"got {_show(value)}"
            )

    return check


_DURATION: Final = (_greater_than(0), _between(0, MAX_SECONDS))


def _one_of(*choices: str) -> _Validator:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            listed = ", ".join(repr(choice) for choice in choices)
            raise InvalidSetting(f"expected one of {listed}, got {_show(value)}")

    return check


def _matching(pattern: re.Pattern[str], what: str) -> _Validator:
    def check(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
        if not pattern.match(value):
            raise InvalidSetting(f"expected {what}, got {_show(value)}")

    return check


def _non_empty_strings(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    for index, item in enumerate(value):
        if not item.strip():
            raise InvalidSetting(f"item {index}: a token must not be empty")


#: the shortest admin token accepted (as the ui's tokens)
MIN_ADMIN_TOKEN_LENGTH: Final = 16


def admin_token_problems(tokens: tuple[str, ...], others: tuple[str, ...]) -> list[str]:
    """What is wrong with admin tokens: too short, or also a node or client token (``others``),
    which would give every holder of that token the operator's rights."""
    problems = []
    for index, token in enumerate(tokens):
        if len(token.strip()) < MIN_ADMIN_TOKEN_LENGTH:
            problems.append(f"item {index}: an admin token needs at least "
                            f"{MIN_ADMIN_TOKEN_LENGTH} characters, got {len(token.strip())}")
        elif token in others:
            problems.append(f"item {index}: an admin token must not also be a node or client "
                            "token")
    return problems


def _admin_tokens(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problems = admin_token_problems(value, ())
    if problems:
        raise InvalidSetting("; ".join(problems))


_TOKEN_PRINCIPAL_RE: Final = re.compile(r"^token:[0-9a-f]{8}$")
_MAX_ID_LEN: Final = 200  # an id on the wire (docs/protocol.md)


def _principal_problem(principal: str) -> str | None:
    if not principal.strip() or not principal.isprintable():
        return f"{principal!r}: a principal must be a non-empty printable name"
    if principal.startswith("token:") and not _TOKEN_PRINCIPAL_RE.match(principal):
        return (f"{principal!r}: a token's principal is token: and 8 lower-case hex digits, as "
                "welcome.principal and the log show it")
    return None


def _node_id_patterns(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problems: list[str] = []
    for principal, patterns in value.items():
        problem = _principal_problem(principal)
        if problem:
            problems.append(problem)
        for index, pattern in enumerate(patterns):
            if not pattern or len(pattern) > _MAX_ID_LEN or not pattern.isprintable():
                problems.append(f"{principal!r} item {index}: a pattern must be 1 to "
                                f"{_MAX_ID_LEN} printable characters, got {pattern!r}")
    if problems:
        raise InvalidSetting("; ".join(problems))


#: bounds of a fair share weight: their ratio bounds how far one principal's virtual time runs
#: ahead of another's per dispatch, and keeps cost / weight a finite, representable number
MIN_WEIGHT: Final = 0.001
MAX_WEIGHT: Final = 1000.0


def _fair_weights(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problems: list[str] = []
    for principal, weight in value.items():
        problem = _principal_problem(principal)
        if problem:
            problems.append(problem)
        if not MIN_WEIGHT <= weight <= MAX_WEIGHT:  # NaN fails too
            problems.append(f"{principal!r}: a weight must be a number between {MIN_WEIGHT} and "
                            f"{_show(MAX_WEIGHT)}, got {_show(weight)}")
    if problems:
        raise InvalidSetting("; ".join(problems))


def setting(
    default: Any,
    doc: str,
    *validators: _Validator,
    shown: Callable[[Any], str] | None = None,
) -> Any:
    """One documented setting: an attrs field whose ``doc`` metadata feeds :func:`config_docs`.

    ``shown`` replaces the value in ``repr`` (secrets must not reach logs).
    """
    return attrs.field(
        default=default,
        validator=list(validators) or None,
        repr=shown if shown is not None else True,
        metadata={"doc": doc},
    )


def _hidden_tokens(tokens: tuple[str, ...]) -> str:
    return f"<{len(tokens)} tokens>"


def _url_without_password(url: str) -> str:
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def _unset_or(*checks: _Validator) -> _Validator:
    """A limit that may be left out (None: no limit); when given, it passes every check."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        try:
            for one in checks:
                one(instance, attribute, value)
        except InvalidSetting as exc:
            raise InvalidSetting(f"{exc} (leave the setting out for no limit)") from None

    return check


def _principal_names(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problems: list[str] = []
    for principal in value:
        if not principal.strip() or not principal.isprintable() or len(principal) > _MAX_ID_LEN:
            problems.append(f"{principal!r}: a principal must be a non-empty printable name")
        elif principal.startswith("token:") and not _TOKEN_PRINCIPAL_RE.match(principal):
            problems.append(f"{principal!r}: a token's principal is token: and 8 lower-case hex "
                            "digits, as welcome.principal and the log show it")
    if problems:
        raise InvalidSetting("; ".join(problems))


_MAX_RATE: Final = 1e6


def _pool_rates(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problems: list[str] = []
    for pool, rate in value.items():
        if not pool or len(pool) > _MAX_ID_LEN or not pool.isprintable():
            problems.append(f"{pool!r}: a pool key is 1 to {_MAX_ID_LEN} printable characters")
        if not 0 < rate <= _MAX_RATE:  # written this way round so NaN fails
            problems.append(f"{pool!r}: expected a rate > 0 and <= {_MAX_RATE:g} dispatches per "
                            f"second, got {_show(rate)} (leave the pool out for no limit)")
    if problems:
        raise InvalidSetting("; ".join(problems))
