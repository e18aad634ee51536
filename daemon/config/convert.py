"""The one cattrs converter for ``sched.toml`` and plugin tables, and the error lines it reports."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Callable, Iterable, Mapping, MutableSequence, MutableSet, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Final, Literal

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

from schedd.config.schema import _CONFIG_ONLY_FIELDS, DEFAULT_PLUGINS, PLUGIN_NAME_RE, Config
from schedd.config.validators import InvalidSetting, _show


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
