"""The typed facade over pluggy: the one place that calls ``pm.hook.*``.

Rules this module owns:

* **One manager per daemon instance.** :class:`PluginManager` wraps its own
  :class:`pluggy.PluginManager`; nothing here is module-global, so two daemons (or two tests) in
  one process never share plugins.
* **Loading.** Plugins are entry points of group :data:`ENTRY_POINT_GROUP`; the entry name is the
  plugin name and the value a module or object holding ``@hookimpl`` functions (a class is
  instantiated without arguments). Only names in ``[plugins] enabled`` are imported. The built-in
  plugins load the same way as third-party ones; the core's own decision defaults
  (:class:`schedd.core_hooks.CoreHooks`) are registered first as ``core``, ``trylast``.
* **Order.** Decision hooks ask plugins in ``enabled`` order (earlier wins), then the core.
* **Every problem at once.** Unknown names, import failures, bad hook implementations and invalid
  ``[plugins.<name>]`` tables are collected and raised together in one
  :class:`~schedd.errors.ConfigError`, table errors as ``$.plugins.<name>.<field>: …`` lines made
  by the same converter as the rest of the configuration.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import inspect
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, overload

import attrs
import pluggy

import schedd.hookspecs as hookspecs
from schedd.config import AuthSection, Config, converter, error_lines
from schedd.core_hooks import CoreHooks
from schedd.errors import ConfigError, ProtocolError
from schedd.markers import Service

if TYPE_CHECKING:
    from schedd.api import Daemon

__all__ = ["CORE_PLUGIN", "ENTRY_POINT_GROUP", "PluginManager", "installed_plugins"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "schedd.plugins"
CORE_PLUGIN: Final = "core"
#: the command line's built-in commands (schedd.cli.commands.BuiltinCommands), registered by it
CLI_PLUGIN: Final = "cli"

T = TypeVar("T")


def installed_plugins() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """Entry points of :data:`ENTRY_POINT_GROUP` by plugin name (several when packages clash)."""
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry_point.name, []).append(entry_point)
    return found


def _describe_entry_point(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    package = f"{dist.name} {dist.version}" if dist is not None else "unknown package"
    return f"{entry_point.value} from {package}"


class PluginManager:
    """The enabled plugins of one daemon instance and a typed method for every hook."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._names: list[str] = []
        self._settings: dict[str, object] = {}

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: Config, extra: Mapping[str, object] | None = None) -> PluginManager:
        """Register the core defaults and every plugin ``config.plugins`` enables.

        :param config: the loaded configuration.
        :param extra: plugin objects by name, available in addition to installed entry points
            (and taking precedence over one of the same name); tests use it to skip packaging.
            They are registered only when enabled, like installed plugins.
        :returns: the ready manager.
        :raises ConfigError: listing every problem found.
        """
        manager = cls()
        manager._pm.register(CoreHooks(config.auth), name=CORE_PLUGIN)
        errors = manager._table_errors_for_disabled(config)
        loaded: dict[str, object] = {}
        for name, plugin_or_error in manager._import(config.plugins, dict(extra or {})).items():
            if isinstance(plugin_or_error, str):
                errors.append(plugin_or_error)
            else:
                loaded[name] = plugin_or_error
        # pluggy calls the most recently registered implementation first: register in reverse
        # so the first plugin listed in `enabled` is asked first.
        for name in reversed(config.plugins):
            if name not in loaded:
                continue
            try:
                manager._pm.register(loaded[name], name=name)
            except (ValueError, pluggy.PluginValidationError) as exc:
                errors.append(f"$.plugins.enabled: plugin {name!r} cannot be registered: {exc}")
                continue
            manager._names.append(name)
        manager._names.reverse()
        errors += manager._unknown_hook_errors()
        for name in manager._names:
            errors += manager._configure(name, config)
        if not errors:
            errors += manager._hand_settings()
        if errors:
            raise ConfigError(errors)
        try:
            manager._pm.check_pending()
        except pluggy.PluginValidationError as exc:  # pragma: no cover - caught above
            raise ConfigError([f"$.plugins.enabled: {exc}"]) from None
        log.debug("plugins loaded: %s", ", ".join(manager._names) or "none")
        return manager

    def reload_auth(self, auth: AuthSection) -> None:
        """Swap the core's token check for one built from ``auth`` (SIGHUP)."""
        self._pm.unregister(name=CORE_PLUGIN)
        self._pm.register(CoreHooks(auth), name=CORE_PLUGIN)

    def is_admin(self, role: str, token: str | None) -> bool:
        """Whether a ``hello`` is an operator's: a client with an ``[auth] admin_tokens`` token
        (decided by the core alone, not by a hook)."""
        core = self._pm.get_plugin(CORE_PLUGIN)
        return isinstance(core, CoreHooks) and core.is_admin(role, token)

    @staticmethod
    def _table_errors_for_disabled(config: Config) -> list[str]:
        enabled = ", ".join(config.plugins) or "none"
        return [
            f"$.plugins.{name}: settings for plugin {name!r}, which is not enabled "
            f"(add it to plugins.enabled; enabled: {enabled})"
            for name in config.plugin_tables
            if name not in config.plugins
        ]

    @staticmethod
    def _import(names: tuple[str, ...], extra: dict[str, object]) -> dict[str, object | str]:
        """Each enabled plugin's object, or the error line explaining why there is none."""
        installed = installed_plugins()
        known = sorted({*installed, *extra})
        result: dict[str, object | str] = {}
        for name in names:
            if name in extra:
                result[name] = extra[name]
                continue
            candidates = installed.get(name, [])
            if not candidates:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                result[name] = (
                    f"$.plugins.enabled: unknown plugin {name!r}; {hint}"
                    f"installed: {', '.join(known) or 'none'}"
                )
                continue
            if len(candidates) > 1:
                sources = "; ".join(_describe_entry_point(ep) for ep in candidates)
                result[name] = (
                    f"$.plugins.enabled: plugin {name!r} is provided by more than one package: "
                    f"{sources}"
                )
                continue
            entry_point = candidates[0]
            try:
                plugin = entry_point.load()
                if inspect.isclass(plugin):
                    plugin = plugin()
            except Exception as exc:
                result[name] = (
                    f"$.plugins.enabled: plugin {name!r} ({entry_point.value}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                )
                continue
            result[name] = plugin
        return result

    def _unknown_hook_errors(self) -> list[str]:
        """What ``check_pending`` checks, for every plugin at once and with a suggestion."""
        specs = [name for name in vars(self._pm.hook) if not name.startswith("_")]
        specs = [name for name in specs if getattr(self._pm.hook, name).has_spec()]
        errors = []
        for name in sorted(vars(self._pm.hook)):
            caller = getattr(self._pm.hook, name)
            if name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                close = difflib.get_close_matches(name, specs, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                errors.append(
                    f"$.plugins.enabled: plugin {impl.plugin_name!r} implements unknown hook "
                    f"{name!r}{hint}"
                )
        return errors

    def _configure(self, name: str, config: Config) -> list[str]:
        """Structure the plugin's table into the class it declares; return error lines."""
        path = f"$.plugins.{name}"
        table = config.plugin_tables.get(name, {})
        try:
            settings_class = self._settings_class(name)
        except Exception as exc:
            return [f"{path}: plugin {name!r} failed to declare its settings: {exc!r}"]
        if settings_class is None:
            if table:
                keys = ", ".join(sorted(table))
                return [f"{path}: plugin {name!r} takes no settings, got: {keys}"]
            self._settings[name] = None
            return []
        if not (inspect.isclass(settings_class) and attrs.has(settings_class)):
            return [
                f"{path}: plugin {name!r} declared {settings_class!r} as its settings, "
                "which is not an attrs class"
            ]
        try:
            self._settings[name] = converter.structure(table, settings_class)
        except Exception as exc:
            return error_lines(exc, path, config.env_overrides)
        return []

    def _hand_settings(self) -> list[str]:
        # Registration hook asked of one plugin: each receives its own structured settings.
        errors: list[str] = []
        for impl in self._pm.hook.schedd_configure.get_hookimpls():
            if impl.plugin_name not in self._settings:
                continue
            try:
                kwargs = {"settings": self._settings[impl.plugin_name]} if impl.argnames else {}
                impl.function(**kwargs)
            except Exception as exc:
                errors.append(f"$.plugins.{impl.plugin_name}: schedd_configure failed: {exc!r}")
        return errors

    def _settings_class(self, name: str) -> type | None:
        # Registration hook asked of one plugin: the answer belongs to that plugin's table.
        for impl in self._pm.hook.schedd_plugin_config.get_hookimpls():
            if impl.plugin_name == name:
                declared = impl.function()
                if declared is None or isinstance(declared, type):
                    return declared
                raise TypeError(f"schedd_plugin_config returned {declared!r}, not a class")
        return None

    # ------------------------------------------------------------------------------------------
    # Introspection
    # ------------------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The loaded plugins, in the order decision hooks ask them."""
        return tuple(self._names)

    @overload
    def plugin_config(self, name: str) -> object: ...

    @overload
    def plugin_config(self, name: str, cls: type[T]) -> T: ...

    def plugin_config(self, name: str, cls: type[Any] | None = None) -> object:
        """A loaded plugin's structured settings (``None`` if it declares no settings class).

        :param name: the plugin name.
        :param cls: when given, the settings are checked to be an instance of it (for typing).
        :raises KeyError: when no plugin of that name is loaded.
        """
        if name not in self._settings:
            raise KeyError(f"plugin {name!r} is not loaded (loaded: {', '.join(self._names)})")
        settings = self._settings[name]
        if cls is not None and not isinstance(settings, cls):
            raise TypeError(f"settings of plugin {name!r} are {settings!r}, not {cls.__name__}")
        return settings

    # ------------------------------------------------------------------------------------------
    # Registration hooks
    # ------------------------------------------------------------------------------------------

    def add_cli_commands(
        self, subparsers: argparse._SubParsersAction[Any], builtin: object | None = None
    ) -> None:
        """Let every plugin add its sub-commands to ``schedd``; ``builtin`` (the command line's
        own commands, a hook implementation) is registered first, once, as ``cli``."""
        if builtin is not None and not self._pm.has_plugin(CLI_PLUGIN):
            self._pm.register(builtin, name=CLI_PLUGIN)
        self._pm.hook.schedd_add_cli_commands(subparsers=subparsers)

    # ------------------------------------------------------------------------------------------
    # Decision hooks
    # ------------------------------------------------------------------------------------------

    def node_pools(
        self, node_id: str, capabilities: dict[str, Any], declared_pools: list[str]
    ) -> list[str]:
        """The pool keys a registering node serves."""
        result = self._pm.hook.schedd_node_pools(
            node_id=node_id, capabilities=capabilities, declared_pools=list(declared_pools)
        )
        return _pool_keys("schedd_node_pools", result, declared_pools)

    def job_pools(
        self, job_id: str | None, requirements: dict[str, Any], declared_pools: list[str]
    ) -> list[str]:
        """The candidate pool keys of a submitted job (empty: the job cannot be placed)."""
        result = self._pm.hook.schedd_job_pools(
            job_id=job_id, requirements=requirements, declared_pools=list(declared_pools)
        )
        return _pool_keys("schedd_job_pools", result, declared_pools)

    def authenticate(self, role: str, token: str | None, peer: str) -> str | None:
        """The principal of a ``hello``, or ``None`` when it is refused.

        Fails closed: an unexpected exception in a plugin is logged and refuses the peer.
        A :class:`~schedd.errors.ProtocolError` raised by a plugin propagates (its code and
        message go back to the peer).
        """
        try:
            result = self._pm.hook.schedd_authenticate(role=role, token=token, peer=peer)
        except ProtocolError:
            raise
        except Exception:
            log.exception("schedd_authenticate failed for %s peer %s; refusing it", role, peer)
            return None
        if result is None:
            return None
        if not isinstance(result, str) or not result:
            log.error("schedd_authenticate returned %r for %s; refusing it", result, peer)
            return None
        return result

    def node_stale(self, app: Daemon, node_id: str, epoch: int) -> bool:
        """True when a plugin takes over a node connection whose registration went stale.

        An exception in a plugin is logged and counts as no answer (the core then closes the
        connection, which is always safe).
        """
        try:
            result = self._pm.hook.schedd_node_stale(app=app, node_id=node_id, epoch=epoch)
        except Exception:
            log.exception("schedd_node_stale failed for node %s; closing its connection", node_id)
            return False
        return result is True

    # ------------------------------------------------------------------------------------------
    # Event hooks
    # ------------------------------------------------------------------------------------------

    def node_registered(self, node_id: str, epoch: int, pools: list[str], instance: str) -> None:
        """Tell plugins a node registered."""
        self._notify(
            "schedd_node_registered", node_id=node_id, epoch=epoch, pools=pools, instance=instance
        )

    def node_offline(self, node_id: str, reason: str) -> None:
        """Tell plugins a node went offline."""
        self._notify("schedd_node_offline", node_id=node_id, reason=reason)

    def job_state_changed(self, job_id: str, state: str, attempt: int, node: str | None) -> None:
        """Tell plugins a job changed state."""
        self._notify(
            "schedd_job_state_changed", job_id=job_id, state=state, attempt=attempt, node=node
        )

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        # Fire-and-forget: a broken listener must not fail the state change it hears about.
        try:
            getattr(self._pm.hook, hook_name)(**kwargs)
        except Exception:
            log.exception("%s raised; the event is dropped for later plugins", hook_name)

    # ------------------------------------------------------------------------------------------
    # Service hooks
    # ------------------------------------------------------------------------------------------

    def services(self, app: Daemon) -> list[Service]:
        """Every plugin's services, in plugin order, for the core to ``nursery.start``."""
        # pluggy returns results last-registered first, which is `enabled` order here.
        results = self._pm.hook.schedd_services(app=app)
        services: list[Service] = []
        for result in results:
            for service in result or []:
                if not callable(service):
                    raise TypeError(f"schedd_services returned {service!r}, which is not callable")
                services.append(service)
        return services


def _pool_keys(hook_name: str, result: object, declared_pools: list[str]) -> list[str]:
    if result is None:  # only when the core default is missing, which load() never allows
        return list(declared_pools)
    if not isinstance(result, list | tuple) or not all(isinstance(key, str) for key in result):
        raise TypeError(f"{hook_name} returned {result!r}; expected a list of pool keys (str)")
    return list(result)
