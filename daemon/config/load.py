"""Loading ``sched.toml``: the file, environment overrides and token files."""

from __future__ import annotations

import difflib
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
from cattrs.errors import (
    ClassValidationError,
)

from schedd.config.convert import _homogeneous_sequence, _name_variables, converter, error_lines
from schedd.config.schema import PLUGIN_NAME_RE, SECTIONS, AuthSection, Config
from schedd.config.validators import admin_token_problems
from schedd.errors import ConfigError
from schedd.principals import token_principal

DEFAULT_PATH: Final = Path("sched.toml")
ENV_PREFIX: Final = "SCHEDD_"
#: ``SCHEDD_*`` variables that are not settings (read by the CLI, not by :func:`load_config`).
# SCHEDD_CONFIG names the file; SCHEDD_URL and SCHEDD_TOKEN belong to the CLI's client commands.
NOT_OVERRIDES: Final = frozenset({"SCHEDD_CONFIG", "SCHEDD_URL", "SCHEDD_TOKEN"})


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
    admin, admin_errors = _read_tokens(
        "admin_token_file", auth.admin_token_file, base, config.env_overrides
    )
    others = auth.node_tokens + node + auth.client_tokens + client
    errors = node_errors + client_errors + admin_errors
    for field, tokens in (("admin_tokens", auth.admin_tokens), ("admin_token_file", admin)):
        problems = admin_token_problems(tokens, others)
        errors += [_name_variables(f"$.auth.{field}: {problem}", config.env_overrides)
                   for problem in problems]
        if problems and tokens is admin:
            admin = ()  # not to be accepted (the errors refuse the whole configuration)
    auth = attrs.evolve(
        auth,
        node_tokens=auth.node_tokens + node,
        client_tokens=auth.client_tokens + client,
        admin_tokens=auth.admin_tokens + admin,
    )
    errors += _unknown_node_principals(auth, config.env_overrides)
    return attrs.evolve(config, auth=auth), errors


def _unknown_node_principals(auth: AuthSection, env_overrides: Mapping[str, str]) -> list[str]:
    """``node_id_patterns`` entries naming a token principal that no node token has: a typo
    there would leave the meant principal unrestricted."""
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
