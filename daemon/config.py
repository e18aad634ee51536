"""``sched.toml``: the daemon's settings as frozen attrs classes, validated by one cattrs converter.

This module owns three rules:

* **Every error at once, with its path.** Structuring collects every problem of the document
  before failing and reports each as one line, ``$.jobs.ack_timeout: expected a number > 0, got
  -1``, in a :class:`~schedd.errors.ConfigError`. Unknown keys are errors (``forbid_extra_keys``),
  and types are strict: ``"5"`` is not a number and ``1`` is not ``true``.
* **One converter.** :func:`make_converter` builds it and :data:`converter` is the instance; plugin
  settings tables (``[plugins.<name>]``) go through the same converter, so a plugin's errors read
  exactly like the core's (see :mod:`schedd.plugin_manager`).
* **Environment overrides** win over the file. A variable ``SCHEDD_<SECTION>__<KEY>`` sets
  ``<key>`` of ``[<section>]``; a double underscore separates levels and names are lower-cased::

      SCHEDD_REDIS__URL=redis://10.0.0.5:6379/0          -> [redis] url
      SCHEDD_JOBS__ACK_TIMEOUT=2                          -> [jobs] ack_timeout = 2
      SCHEDD_PLUGINS__TRANSPORT_WS__LISTEN=0.0.0.0:9000  -> [plugins.transport_ws] listen
      SCHEDD_PLUGINS=transport_ws,ui                      -> [plugins] enabled (shorthand)

  A value is read as a TOML value when it parses as one (``2``, ``2.5``, ``true``, ``["a", "b"]``,
  ``"quoted"``) and as a plain string otherwise; a setting declared as a string always takes the
  text as it is, and a list setting also accepts ``a,b,c``. Every ``SCHEDD_*`` variable is an
  override except the names in :data:`NOT_OVERRIDES`, so a misspelt variable is an error naming it
  instead of being ignored. Errors about a value that came from the environment name the variable.

Layout note: TOML cannot hold both a top-level ``plugins = [...]`` array and ``[plugins.<name>]``
tables (the key would be an array and a table at once), so the enabled list lives in the plugins
table itself::

    [plugins]
    enabled = ["transport_ws", "transport_tcp"]   # earlier entries win decision hooks

    [plugins.transport_ws]
    listen = "127.0.0.1:8765"

In Python the list is :attr:`Config.plugins` and the raw tables :attr:`Config.plugin_tables`.
Relative token-file paths are resolved against the directory of the file that names them (the
current directory for environment overrides and built-in defaults).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import secrets
import socket
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping, MutableSequence, MutableSet, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from schedd.errors import ConfigError
from schedd.protocol import MAX_SECONDS

__all__ = [
    "DEFAULT_PATH",
    "ENV_PREFIX",
    "NOT_OVERRIDES",
    "PLUGIN_NAME_RE",
    "AuthSection",
    "Config",
    "DrainSection",
    "InvalidSetting",
    "JobsSection",
    "LimitsSection",
    "NodesSection",
    "ReaperSection",
    "RedisSection",
    "SchedSection",
    "config_docs",
    "converter",
    "error_lines",
    "load_config",
    "make_converter",
]

DEFAULT_PATH: Final = Path("sched.toml")
ENV_PREFIX: Final = "SCHEDD_"
#: ``SCHEDD_*`` variables that are not settings (read by the CLI, not by :func:`load_config`).
# SCHEDD_CONFIG names the file; SCHEDD_URL and SCHEDD_TOKEN belong to the CLI's client commands.
NOT_OVERRIDES: Final = frozenset({"SCHEDD_CONFIG", "SCHEDD_URL", "SCHEDD_TOKEN"})
#: Plugin names are entry-point names; lower-case so ``SCHEDD_PLUGINS__<NAME>__…`` can address them.
PLUGIN_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_PLUGINS: Final = ("transport_ws", "transport_tcp")

_NAMESPACE_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Instance names go into Redis key names (inbox streams), so no braces (hash tags) or spaces.
_INSTANCE_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{0,128}$")
_URL_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAX_FRAME_LIMIT: Final = 2**32 - 1  # the TCP framing's 4-byte length prefix

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Validation vocabulary
# ---------------------------------------------------------------------------------------------


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
    return "an integer" if attribute.type in (int, "int") else "a number"


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


_TOKEN_PRINCIPAL_RE: Final = re.compile(r"^token:[0-9a-f]{8}$")
_MAX_ID_LEN: Final = 200  # an id on the wire (docs/protocol.md)


def _node_id_patterns(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    problems: list[str] = []
    for principal, patterns in value.items():
        if not principal.strip() or not principal.isprintable():
            problems.append(f"{principal!r}: a principal must be a non-empty printable name")
        elif principal.startswith("token:") and not _TOKEN_PRINCIPAL_RE.match(principal):
            problems.append(f"{principal!r}: a token's principal is token: and 8 lower-case hex "
                            "digits, as welcome.principal and the log show it")
        for index, pattern in enumerate(patterns):
            if not pattern or len(pattern) > _MAX_ID_LEN or not pattern.isprintable():
                problems.append(f"{principal!r} item {index}: a pattern must be 1 to "
                                f"{_MAX_ID_LEN} printable characters, got {pattern!r}")
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


# ---------------------------------------------------------------------------------------------
# The sections of sched.toml
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class SchedSection:
    """``[schedd]``: who this daemon instance is and how it logs."""

    instance: str = setting(
        "",
        "name of this instance (owner of its connections); empty: <hostname>-<pid>-<4 hex>",
        _matching(_INSTANCE_RE, "up to 128 of A-Z a-z 0-9 _ . : -"),
    )
    namespace: str = setting(
        "schedd",
        "prefix of every Redis key; instances sharing it share nodes and jobs",
        _matching(_NAMESPACE_RE, "1 to 64 of A-Z a-z 0-9 _ . -"),
    )
    log_level: str = setting(
        "info", "debug | info | warning | error", _one_of("debug", "info", "warning", "error")
    )
    log_format: str = setting(
        "text", "text (human) | json (one object per line)", _one_of("text", "json")
    )


@attrs.frozen
class RedisSection:
    """``[redis]``: where the shared state lives."""

    url: str = setting(
        "memory://",
        "memory:// (embedded, single process), redis://, rediss://, unix://, sentinel, cluster",
        _matching(_URL_RE, "a URL such as redis://host:6379/0 or memory://"),
        shown=lambda url: repr(_url_without_password(url)),
    )
    connect_timeout: float = setting(5.0, "seconds to open a connection", _greater_than(0))
    command_timeout: float = setting(
        5.0, "seconds before a command counts as failed", _greater_than(0)
    )


@attrs.frozen
class NodesSection:
    """``[nodes]``: heartbeats and liveness."""

    heartbeat_interval: float = setting(
        1.0, "seconds between a node's heartbeats (sent to nodes in welcome)", _greater_than(0)
    )
    liveness_intervals: int = setting(
        3, "a node is dead after this many missed heartbeat intervals", _at_least(1)
    )
    heartbeat_flush: float = setting(
        0.1,
        "seconds heartbeats are coalesced before one script call (< heartbeat_interval)",
        _at_least(0),
    )
    liveness_refresh: int = setting(
        3,
        "an unchanged node's heartbeat goes to Redis once every this many beats (1: every "
        "beat); a silent node is still found after liveness_intervals by its instance",
        _between(1, 10),
    )
    disconnect_grace: float = setting(
        0.5,
        "seconds before a dropped connection's node is taken offline",
        _between(0, 1.0),
    )


@attrs.frozen
class JobsSection:
    """``[jobs]``: defaults for submitted jobs and the queue."""

    # durations a job's deadlines add up: bounded as the protocol bounds a submit's own
    ack_timeout: float = setting(
        5.0, "seconds a node has to accept an assignment", *_DURATION
    )
    run_timeout: float = setting(
        300.0, "seconds a job may run once accepted, or since its last progress", *_DURATION)
    max_run: float = setting(
        86400.0, "seconds after its accept beyond which progress no longer extends a job's "
        "run deadline", *_DURATION)
    queue_timeout: float = setting(60.0, "seconds a job may wait for a free slot", *_DURATION)
    max_attempts: int = setting(3, "assignments before a job fails", _at_least(1))
    queue: bool = setting(True, "queue jobs when no slot is free (false: refuse them)")
    max_queued: int = setting(100000, "queued jobs per namespace before refusing", _at_least(0))
    max_created_pools: int = setting(
        64,
        "pools with no member one principal's queued jobs may keep in existence (a submit "
        "that would queue into more is refused)",
        _at_least(0),
    )
    retention: float = setting(
        3600.0, "seconds a finished job and its result are kept", _at_least(0)
    )
    session_ttl: float = setting(
        600.0, "seconds a session remembers its node after its last job", _at_least(0)
    )


@attrs.frozen
class ReaperSection:
    """``[reaper]``: the sweep that finds dead nodes and missed deadlines."""

    interval: float = setting(0.25, "seconds between sweeps", _greater_than(0))
    batch: int = setting(200, "most nodes or jobs handled per sweep step", _at_least(1))


@attrs.frozen
class AuthSection:
    """``[auth]``: tokens presented in ``hello``; a role with no tokens accepts any peer.

    After :func:`load_config` the token tuples also hold the tokens read from the files.
    :attr:`node_id_patterns` maps a node principal to the ``fnmatch`` globs of the node ids it
    may register (:mod:`schedd.node_ids`); a principal it does not name may register any id.
    """

    node_tokens: tuple[str, ...] = setting(
        (), "tokens accepted from nodes", _non_empty_strings, shown=_hidden_tokens
    )
    client_tokens: tuple[str, ...] = setting(
        (), "tokens accepted from clients", _non_empty_strings, shown=_hidden_tokens
    )
    node_token_file: str = setting("", "file of node tokens: one per line, # comments")
    client_token_file: str = setting("", "file of client tokens: one per line, # comments")
    node_id_patterns: Mapping[str, tuple[str, ...]] = setting(
        {},
        "principal (token:<8 hex>) -> globs of the node ids it may register; unlisted: any id",
        _node_id_patterns,
    )

    def tokens_for(self, role: str) -> tuple[str, ...]:
        """The tokens accepted for ``role`` (``node`` or ``client``; anything else: none)."""
        if role == "node":
            return self.node_tokens
        if role == "client":
            return self.client_tokens
        return ()


@attrs.frozen
class LimitsSection:
    """``[limits]``: what one connection may cost."""

    max_frame: int = setting(1048576, "largest message in bytes", _between(1024, _MAX_FRAME_LIMIT))
    handshake_timeout: float = setting(
        5.0, "seconds a new connection has to send hello", _greater_than(0)
    )
    idle_timeout: float = setting(
        30.0, "seconds of silence before a connection is closed", _greater_than(0)
    )
    max_inflight_submits: int = setting(
        1000, "unanswered submits per client connection", _at_least(1)
    )
    max_messages_per_second: int = setting(
        2000, "messages per second per connection before it is throttled", _at_least(1)
    )
    # Admission (schedd.admission): checked when a connection is accepted, before any work on it
    max_connections: int = setting(20000, "open connections in all; more are refused at accept",
                                   _at_least(1))
    max_connections_per_address: int = setting(
        12000, "open connections from one IP address (an IPv6 /64)", _at_least(1)
    )
    max_pending_handshakes: int = setting(
        1000, "connections not yet past hello, in all; more are refused at accept", _at_least(1)
    )
    max_pending_handshakes_per_address: int = setting(
        256, "connections not yet past hello from one IP address (an IPv6 /64)", _at_least(1)
    )
    max_failed_handshakes: int = setting(
        10, "failed handshakes (refused hello, no hello in time) from one address within "
        "failed_handshake_window before its connections are refused", _at_least(1)
    )
    failed_handshake_window: float = setting(
        60.0, "seconds over which max_failed_handshakes counts", _greater_than(0)
    )
    failed_handshake_backoff: float = setting(
        60.0, "seconds an address's new connections are refused once it reached "
        "max_failed_handshakes", _greater_than(0)
    )


@attrs.frozen
class DrainSection:
    """``[drain]``: shutting down gracefully (SIGTERM)."""

    timeout: float = setting(30.0, "seconds to let running jobs finish", _at_least(0))


@attrs.frozen
class Config:
    """The whole of ``sched.toml`` after environment overrides.

    :attr:`plugins` is ``[plugins] enabled``; :attr:`plugin_tables` holds each ``[plugins.<name>]``
    table as parsed, validated later against the class the plugin declares.
    :attr:`env_overrides` maps a setting's path (``$.jobs.ack_timeout``) to the variable that set
    it.
    """

    schedd: SchedSection = attrs.field(factory=SchedSection)
    redis: RedisSection = attrs.field(factory=RedisSection)
    nodes: NodesSection = attrs.field(factory=NodesSection)
    jobs: JobsSection = attrs.field(factory=JobsSection)
    reaper: ReaperSection = attrs.field(factory=ReaperSection)
    auth: AuthSection = attrs.field(factory=AuthSection)
    limits: LimitsSection = attrs.field(factory=LimitsSection)
    drain: DrainSection = attrs.field(factory=DrainSection)
    plugins: tuple[str, ...] = DEFAULT_PLUGINS
    plugin_tables: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    env_overrides: dict[str, str] = attrs.field(factory=dict)


SECTIONS: Final[dict[str, type[Any]]] = {
    field.name: field.type
    for field in attrs.fields(attrs.resolve_types(Config))
    if field.type is not None and attrs.has(field.type)
}
_CONFIG_ONLY_FIELDS: Final = ("plugins", "plugin_tables", "env_overrides")


# ---------------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------------


def _structure_str(value: Any, _type: Any) -> str:
    if not isinstance(value, str):
        raise InvalidSetting(f"expected a string, got {_show(value)}")
    return value


def _structure_bool(value: Any, _type: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSetting(f"expected true or false, got {_show(value)}")
    return value


def _structure_int(value: Any, _type: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSetting(f"expected an integer, got {_show(value)}")
    return value


def _structure_float(value: Any, _type: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSetting(f"expected a number, got {_show(value)}")
    return float(value)


_SEQUENCE_ORIGINS: Final[dict[Any, Callable[[list[Any]], Any]]] = {
    list: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    Sequence: tuple,
    MutableSequence: list,
    AbstractSet: frozenset,
    MutableSet: set,
}


def _homogeneous_sequence(type_: Any) -> bool:
    if type_ in (list, tuple, set, frozenset):
        return True
    origin = typing.get_origin(type_)
    if origin not in _SEQUENCE_ORIGINS:
        return False
    args = typing.get_args(type_)
    return origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)


def _is_literal(type_: Any) -> bool:
    return typing.get_origin(type_) is Literal


def _expand_type(type_: Any) -> tuple[Callable[[list[Any]], Any], Any]:
    origin = typing.get_origin(type_) or type_
    args = typing.get_args(type_)
    return _SEQUENCE_ORIGINS[origin], (args[0] if args else Any)


def _error_at(path: Sequence[str], message: str) -> Exception:
    """An exception that :func:`error_lines` reports at ``path``, relative to where it is raised."""
    exc: Exception = InvalidSetting(message)
    for name in reversed(path):
        exc.__notes__ = [AttributeValidationNote(f"@ attribute {name}", name, Any)]
        exc = ClassValidationError(f"While structuring {name}", [exc], dict)
    inner = exc.exceptions[0] if isinstance(exc, ClassValidationError) else exc
    return inner


def make_converter() -> cattrs.Converter:
    """Build schedd's converter: strict scalars, unknown keys refused, every error collected.

    Validators of attrs fields run while each field is structured, so a bad value is reported at
    its own path together with every other problem, not one at a time from ``__init__``.
    """
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)

    def structure_literal(value: Any, type_: Any) -> Any:
        choices = typing.get_args(type_)
        if not any(value == choice and type(value) is type(choice) for choice in choices):
            listed = ", ".join(repr(choice) for choice in choices)
            raise InvalidSetting(f"expected one of {listed}, got {_show(value)}")
        return value

    conv.register_structure_hook_func(_is_literal, structure_literal)

    def sequence_factory(type_: Any) -> Callable[[Any, Any], Any]:
        build, item_type = _expand_type(type_)

        def structure_sequence(value: Any, _type: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise InvalidSetting(f"expected an array, got {_show(value)}")
            items: list[Any] = []
            errors: list[Exception] = []
            for index, item in enumerate(value):
                try:
                    items.append(conv.structure(item, item_type))
                except Exception as exc:
                    note = IterableValidationNote(f"@ index {index}", index, item_type)
                    exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                    errors.append(exc)
            if errors:
                raise IterableValidationError(f"While structuring {type_!r}", errors, type_)
            return build(items)

        return structure_sequence

    conv.register_structure_hook_factory(_homogeneous_sequence, sequence_factory)

    def attrs_factory(cl: type[Any]) -> Callable[[Any, Any], Any]:
        attrs.resolve_types(cl)
        overrides: dict[str, Any] = {
            field.name: override(struct_hook=_validating_hook(conv, field))
            for field in attrs.fields(cl)
            if field.validator is not None
        }
        generated = make_dict_structure_fn(
            cl,
            conv,
            _cattrs_forbid_extra_keys=True,
            _cattrs_detailed_validation=True,
            **overrides,
        )

        def structure_attrs(value: Any, _type: Any) -> Any:
            if not isinstance(value, Mapping):
                raise InvalidSetting(f"expected a table, got {_show(value)}")
            return generated(value, cl)

        return structure_attrs

    conv.register_structure_hook_factory(attrs.has, attrs_factory)
    conv.register_structure_hook(Config, _config_hook(conv))
    return conv


def _validating_hook(
    conv: cattrs.Converter, field: attrs.Attribute[Any]
) -> Callable[[Any, Any], Any]:
    validator = field.validator
    assert validator is not None

    def structure_and_validate(value: Any, type_: Any) -> Any:
        result = conv.structure(value, type_)
        try:
            validator(None, field, result)
        except InvalidSetting:
            raise
        except (ValueError, TypeError) as exc:
            # attrs' own validators (a plugin's ge(1), in_(...)) put the message in args[0].
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            raise InvalidSetting(message) from exc
        return result

    return structure_and_validate


def _config_hook(conv: cattrs.Converter) -> Callable[[Any, Any], Config]:
    """Structure the whole document: the sections by cattrs, ``[plugins]`` by hand, then the
    checks that span sections; every problem of all three is raised together."""
    omitted: dict[str, Any] = {name: override(omit=True) for name in _CONFIG_ONLY_FIELDS}
    sections = make_dict_structure_fn(
        Config,
        conv,
        _cattrs_forbid_extra_keys=True,
        _cattrs_detailed_validation=True,
        **omitted,
    )

    def structure_config(value: Any, _type: Any) -> Config:
        if not isinstance(value, Mapping):
            raise InvalidSetting(f"expected a table, got {_show(value)}")
        data = dict(value)
        plugins_table = data.pop("plugins", None)
        errors: list[Exception] = []
        config: Config | None = None
        try:
            config = sections(data, Config)
        except ClassValidationError as exc:
            errors.extend(exc.exceptions)
        enabled: tuple[str, ...] = DEFAULT_PLUGINS
        tables: dict[str, dict[str, Any]] = {}
        if plugins_table is not None:
            try:
                enabled, tables = _structure_plugins(conv, plugins_table)
            except Exception as exc:
                note = AttributeValidationNote("@ attribute plugins", "plugins", Any)
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)
        if config is not None:
            errors.extend(_cross_section_errors(config))
        if errors or config is None:
            raise ClassValidationError("While structuring Config", errors, Config)
        return attrs.evolve(config, plugins=enabled, plugin_tables=tables)

    return structure_config


def _structure_plugins(
    conv: cattrs.Converter, table: Any
) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    if not isinstance(table, Mapping):
        raise InvalidSetting(f"expected a table, got {_show(table)}")
    errors: list[Exception] = []
    enabled: tuple[str, ...] | None = DEFAULT_PLUGINS
    if "enabled" in table:
        try:
            enabled = conv.structure(table["enabled"], tuple[str, ...])
            _check_plugin_names(enabled)
        except Exception as exc:
            note = AttributeValidationNote("@ attribute enabled", "enabled", Any)
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]
            errors.append(exc)
            enabled = None
    tables: dict[str, dict[str, Any]] = {}
    for name, settings in table.items():
        if name == "enabled":
            continue
        if not isinstance(settings, Mapping):
            errors.append(
                _error_at(
                    [name],
                    f"expected a table of settings for plugin {name!r}, got {_show(settings)}",
                )
            )
        elif enabled is not None and name not in enabled:
            errors.append(_error_at([name], _not_enabled_message(name, enabled)))
        else:
            tables[name] = dict(settings)
    if errors:
        raise ClassValidationError("While structuring plugins", errors, dict)
    return enabled or (), tables


def _check_plugin_names(names: Sequence[str]) -> None:
    bad = [name for name in names if not PLUGIN_NAME_RE.match(name)]
    if bad:
        raise InvalidSetting(
            f"invalid plugin name {', '.join(map(repr, bad))} "
            "(expected a lower-case letter, then lower-case letters, digits or _)"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InvalidSetting(f"plugin listed more than once: {', '.join(repeated)}")


def _not_enabled_message(name: str, enabled: Iterable[str]) -> str:
    listed = ", ".join(enabled) or "none"
    return (
        f"settings for plugin {name!r}, which is not enabled "
        f"(add it to plugins.enabled; enabled: {listed})"
    )


def _cross_section_errors(config: Config) -> list[Exception]:
    errors: list[Exception] = []
    interval = config.nodes.heartbeat_interval
    if config.nodes.heartbeat_flush >= interval:
        errors.append(
            _error_at(
                ["nodes", "heartbeat_flush"],
                f"must be less than nodes.heartbeat_interval ({_show(interval)}), "
                f"got {_show(config.nodes.heartbeat_flush)}",
            )
        )
    if config.limits.idle_timeout <= interval:
        errors.append(
            _error_at(
                ["limits", "idle_timeout"],
                f"must be greater than nodes.heartbeat_interval ({_show(interval)}), or idle "
                "nodes are disconnected between heartbeats, "
                f"got {_show(config.limits.idle_timeout)}",
            )
        )
    return errors


converter: Final = make_converter()


# ---------------------------------------------------------------------------------------------
# Error lines
# ---------------------------------------------------------------------------------------------

_EXTRA_MARK: Final = "\x00extra\x00"


def _describe(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, InvalidSetting):
        return str(exc)
    if isinstance(exc, ForbiddenExtraKeysError):
        allowed = [field.name for field in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        if exc.cl is Config:
            allowed = [name for name in allowed if name not in _CONFIG_ONLY_FIELDS] + ["plugins"]
        return _EXTRA_MARK + "\x00".join([",".join(sorted(exc.extra_fields)), ",".join(allowed)])
    if isinstance(exc, KeyError):
        return "required setting missing"
    if isinstance(exc, AttributeError) and str(exc).endswith("has no attribute 'items'"):
        return "expected a table"
    return cattrs.v.format_exception(exc, type_)


def _unknown_key_lines(path: str, payload: str) -> list[str]:
    extra, allowed = payload.split("\x00")
    known = [name for name in allowed.split(",") if name]
    lines = []
    for key in extra.split(","):
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = f"expected one of: {', '.join(known)}" if known else "no settings here"
        lines.append(f"{path}.{key}: unknown setting; {hint}")
    return lines


def error_lines(
    exc: BaseException, root: str = "$", env_overrides: Mapping[str, str] | None = None
) -> list[str]:
    """One ``path: message`` line per problem in a cattrs structuring error.

    ``root`` is the path of the value that was structured (``$.plugins.transport_ws`` for a plugin
    table). When a line's path was set by an environment variable, the variable is named.
    """
    lines: list[str] = []
    for raw in cattrs.transform_error(exc, root, _describe):
        message, _sep, path = raw.rpartition(" @ " + root)
        path = root + path
        if message.startswith(_EXTRA_MARK):
            found = _unknown_key_lines(path, message[len(_EXTRA_MARK) :])
        else:
            found = [f"{path}: {message}"]
        lines.extend(_name_variables(line, env_overrides or {}) for line in found)
    return lines


def _name_variables(line: str, env_overrides: Mapping[str, str]) -> str:
    path = line.split(": ", 1)[0]
    names = sorted(
        variable
        for setting_path, variable in env_overrides.items()
        if path == setting_path
        or path.startswith((setting_path + ".", setting_path + "["))
        or setting_path.startswith(path + ".")
    )
    return f"{line} (from {', '.join(names)})" if names else line


# ---------------------------------------------------------------------------------------------
# Environment overrides
# ---------------------------------------------------------------------------------------------

_NOT_TOML: Final = object()


def _toml_value(text: str) -> Any:
    try:
        parsed = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return _NOT_TOML
    return parsed["value"] if list(parsed) == ["value"] else _NOT_TOML


def _env_value(text: str, target: Any) -> Any:
    """Read one variable's text for a setting of type ``target`` (``Any`` when unknown)."""
    parsed = _toml_value(text)
    if target is str:
        return parsed if isinstance(parsed, str) else text
    if _homogeneous_sequence(target) and (parsed is _NOT_TOML or isinstance(parsed, str)):
        source: str = parsed if isinstance(parsed, str) else text
        return [item.strip() for item in source.split(",") if item.strip()]
    return text if parsed is _NOT_TOML else parsed


def _setting_for(variable: str) -> tuple[list[str], Any] | str:
    """Map a variable to (path in the document, type), or return why it names no setting."""
    parts = [part.lower() for part in variable[len(ENV_PREFIX) :].split("__")]
    if parts in (["plugins"], ["plugins", "enabled"]):
        return ["plugins", "enabled"], tuple[str, ...]
    if any(not part for part in parts):
        return "empty name between double underscores"
    if parts[0] == "plugins":
        if not PLUGIN_NAME_RE.match(parts[1]):
            return f"{parts[1]!r} is not a plugin name"
        if len(parts) == 2:
            return f"set a key of the plugin's table: {variable}__<KEY>"
        return parts, Any
    section = SECTIONS.get(parts[0])
    if section is None:
        # The common slip is one underscore where two belong: SCHEDD_REDIS_URL.
        split = [
            [name, parts[0][len(name) + 1 :], *parts[1:]]
            for name in SECTIONS
            if parts[0].startswith(name + "_")
        ]
        if split:
            suggestion = f"; did you mean {_variable(split[0])}?"
        else:
            hint = difflib.get_close_matches(parts[0], [*SECTIONS, "plugins"], n=1)
            suggestion = f"; did you mean {_variable([hint[0]])}__…?" if hint else ""
        return f"no section [{parts[0]}]{suggestion}"
    fields = {field.name: field for field in attrs.fields(section)}
    if len(parts) != 2 or parts[1] not in fields:
        key = ".".join(parts[1:])
        hint = difflib.get_close_matches(parts[1] if len(parts) > 1 else "", list(fields), n=1)
        suggestion = f"; did you mean {_variable([parts[0], hint[0]])}?" if hint else ""
        return f"no setting {key!r} in [{parts[0]}]{suggestion}"
    return parts, fields[parts[1]].type


def _variable(parts: Sequence[str]) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in parts)


def _path_text(parts: Sequence[str]) -> str:
    return "$." + ".".join(parts)


def _apply_env(
    document: dict[str, Any], env: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Write every ``SCHEDD_*`` override into ``document``; return {path: variable} and errors."""
    applied: dict[str, str] = {}
    errors: list[str] = []
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable in NOT_OVERRIDES:
            continue
        target = _setting_for(variable)
        if isinstance(target, str):
            errors.append(f"{variable}: not a setting ({target})")
            continue
        parts, type_ = target
        path = _path_text(parts)
        if path in applied:
            errors.append(f"{variable}: {path} is already set by {applied[path]}")
            continue
        table: Any = document
        for depth, part in enumerate(parts[:-1]):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                errors.append(
                    f"{variable}: cannot set {path}: {_path_text(parts[: depth + 1])} "
                    "is not a table"
                )
                break
        else:
            table[parts[-1]] = _env_value(env[variable], type_)
            applied[path] = variable
    return applied, errors


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_TOML_POSITION: Final = re.compile(
    r"^(?P<message>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)$"
)


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_POSITION.match(str(exc))
        if found is None:
            raise ConfigError([f"{path}: {exc}"]) from None
        position = f"{path}:{found['line']}:{found['column']}"
        raise ConfigError([f"{position}: {found['message']}"]) from None


def _read_tokens(
    field: str, file_name: str, base: Path, env_overrides: Mapping[str, str]
) -> tuple[tuple[str, ...], list[str]]:
    if not file_name:
        return (), []
    setting_path = f"$.auth.{field}"
    origin = base if setting_path not in env_overrides else Path.cwd()
    path = (origin / file_name).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 ({exc.reason})"
        line = f"{setting_path}: cannot read {path}: {reason}"
        return (), [_name_variables(line, env_overrides)]
    tokens = tuple(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    if not tokens:
        # An empty file would silently mean "no tokens: anyone may connect".
        line = f"{setting_path}: {path} holds no tokens"
        return (), [_name_variables(line, env_overrides)]
    return tokens, []


def _with_token_files(config: Config, base: Path) -> tuple[Config, list[str]]:
    auth = config.auth
    node, node_errors = _read_tokens(
        "node_token_file", auth.node_token_file, base, config.env_overrides
    )
    client, client_errors = _read_tokens(
        "client_token_file", auth.client_token_file, base, config.env_overrides
    )
    auth = attrs.evolve(
        auth,
        node_tokens=auth.node_tokens + node,
        client_tokens=auth.client_tokens + client,
    )
    errors = node_errors + client_errors + _unknown_node_principals(auth, config.env_overrides)
    return attrs.evolve(config, auth=auth), errors


def _unknown_node_principals(auth: AuthSection, env_overrides: Mapping[str, str]) -> list[str]:
    """``node_id_patterns`` entries naming a token principal that no node token has: a typo
    there would leave the meant principal unrestricted."""
    from schedd.core_hooks import token_principal  # core_hooks imports this module

    known = {token_principal(token) for token in auth.node_tokens}
    return [
        _name_variables(f"$.auth.node_id_patterns: {principal} is the principal of no node "
                        "token (token:<first 8 hex digits of sha256(token)>)", env_overrides)
        for principal in auth.node_id_patterns
        if principal.startswith("token:") and principal not in known
    ]


def generate_instance_name() -> str:
    """``<hostname>-<pid>-<4 hex>``: unique enough per process, readable in ``schedd nodes``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:96] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


def load_config(path: Path | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Read ``sched.toml``, apply ``SCHEDD_*`` overrides from ``env``, validate everything.

    :param path: the file; ``None`` means ``./sched.toml`` when it exists, else built-in defaults.
    :param env: the environment to take overrides from.
    :returns: the configuration, with token files read and an empty instance name generated.
    :raises ConfigError: listing every problem, one ``path: message`` line each.
    """
    if path is None and DEFAULT_PATH.is_file():
        path = DEFAULT_PATH
    document = _read_document(path) if path is not None else {}
    base = path.parent if path is not None else Path()
    env_overrides, errors = _apply_env(document, env)
    config: Config | None = None
    try:
        config = converter.structure(document, Config)
    except ClassValidationError as exc:
        errors.extend(error_lines(exc, "$", env_overrides))
    if config is not None:
        config = attrs.evolve(config, env_overrides=env_overrides)
        config, token_errors = _with_token_files(config, base)
        errors.extend(token_errors)
    if errors or config is None:
        raise ConfigError(errors)
    if not config.schedd.instance:
        schedd = attrs.evolve(config.schedd, instance=generate_instance_name())
        config = attrs.evolve(config, schedd=schedd)
    return config


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------


def _toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_literal(item) for item in value) + "]"
    return str(value)


def config_docs() -> str:
    """A commented ``sched.toml`` holding every setting at its default, plus the override rule."""
    lines = ["# sched.toml: every setting at its default (generated by schedd.config.config_docs)"]
    for name, section in SECTIONS.items():
        summary = (section.__doc__ or "").splitlines()[0].replace("``", "")
        lines += ["", f"# {summary}", f"[{name}]"]
        for field in attrs.fields(section):
            assignment = f"{field.name} = {_toml_literal(field.default)}"
            lines.append(f"{assignment:<40} # {field.metadata.get('doc', '')}")
    lines += [
        "",
        "[plugins]",
        f"{'enabled = ' + _toml_literal(DEFAULT_PLUGINS):<40} # entry points of group "
        "schedd.plugins; earlier entries win decision hooks",
        "",
        "# [plugins.<name>]: one table per enabled plugin, checked against the class it declares",
        "",
    ]
    lines += ["# " + line if line else "#" for line in _ENV_RULE.strip().splitlines()]
    return "\n".join(lines) + "\n"


_ENV_RULE: Final = """
Environment overrides win over the file: SCHEDD_<SECTION>__<KEY>=value, e.g.
  SCHEDD_REDIS__URL=redis://10.0.0.5:6379/0
  SCHEDD_JOBS__ACK_TIMEOUT=2
  SCHEDD_PLUGINS__TRANSPORT_WS__LISTEN=0.0.0.0:9000
  SCHEDD_PLUGINS=transport_ws,ui            (shorthand for SCHEDD_PLUGINS__ENABLED)
Values are TOML values when they parse as one, else text; list settings also take a,b,c.
Every SCHEDD_* variable except SCHEDD_CONFIG must name a setting.
"""
