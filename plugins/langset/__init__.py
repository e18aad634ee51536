"""Language pools for a speech-translation fleet: directed pairs, or LangSet superset matching.

Nodes declare ``asr_langs``, ``semantic_langs`` and ``tts_langs`` (arrays of language codes) in
their capabilities; jobs give ``src_lang`` and ``tgt_lang`` (``src_lang`` may be ``auto``), or
``lang_a`` and ``lang_b`` for two-way jobs, and optionally ``speech: true``. The pool naming and
matching rules are in :mod:`schedd.plugins.langset.pools`; the user documentation is the
"langset" section of ``docs/plugins.md``.

Rules of this plugin:

* **One instance per daemon.** The entry point names :class:`LangsetPlugin`, which the plugin
  manager instantiates once per daemon instance, so the set registry and the settings belong to
  one daemon (two daemons in one process, as in the tests, share nothing).
* **Settings reach the decision hooks through ``schedd_services``**, the one hook that receives
  the app (``app.plugin_config``). The core calls it synchronously before it starts any service
  (so before any transport accepts a node or a client); until then the defaults apply.
* **Decision hooks stay pure.** In ``langset`` mode a job's candidate pools are computed from the
  sets this instance knows: ``known_sets`` from the configuration, the pools of nodes that
  registered on this instance (``schedd_node_registered``), and, every ``refresh_interval``
  seconds, the set pools listed in Redis (one service, the only I/O of the plugin). A set learnt
  on another instance is therefore known here within ``refresh_interval``; list the fleet's sets
  in ``known_sets`` to have them known at once, on every instance.
* **Refusals are protocol errors.** Bad capabilities or requirements raise
  :class:`~schedd.errors.ProtocolError` ``E_BAD_ARG``; the session sends it back as an ``error``
  with the message's ``ref``, and the node or job is not stored.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import trio

from schedd.api import Daemon, Service, StoreError, hookimpl

from .pools import (
    JobLanguages,
    NodeLanguages,
    SetRegistry,
    job_pools,
    node_pools,
    read_job,
    read_node,
    set_key,
)
from .settings import LangsetSettings

__all__ = [
    "PLUGIN_NAME",
    "JobLanguages",
    "LangsetPlugin",
    "LangsetSettings",
    "NodeLanguages",
    "SetRegistry",
]

log = logging.getLogger(__name__)

PLUGIN_NAME: Final = "langset"


class LangsetPlugin:
    """The hooks of the plugin, with the state of one daemon instance."""

    def __init__(self, settings: LangsetSettings | None = None) -> None:
        self.settings = settings or LangsetSettings()
        self.registry = SetRegistry(self.settings.known_sets, self.settings.pool_prefix)

    def configure(self, settings: LangsetSettings) -> None:
        """Use ``settings``; the sets learnt so far (not the configured ones) are kept."""
        learnt = self.registry.learnt()
        self.settings = settings
        self.registry = SetRegistry(settings.known_sets, settings.pool_prefix)
        self.registry.learn(set_key(settings.pool_prefix, codes) for codes in learnt)

    # -- registration --------------------------------------------------------------------------

    @hookimpl
    def schedd_plugin_config(self) -> type:
        """Declare :class:`LangsetSettings`."""
        return LangsetSettings

    # -- decisions -----------------------------------------------------------------------------

    @hookimpl
    def schedd_node_pools(
        self, node_id: str, capabilities: dict[str, Any], declared_pools: list[str]
    ) -> list[str] | None:
        """Language pools of a node that declares language capabilities; else no opinion."""
        langs = read_node(capabilities, self.settings)
        if langs is None:
            return None
        for name, codes in langs.dropped.items():
            log.warning(
                "node %s: %s %s not in [plugins.langset] languages; ignored",
                node_id, name, ", ".join(codes),
            )
        return node_pools(langs, declared_pools, self.settings)

    @hookimpl
    def schedd_job_pools(
        self, requirements: dict[str, Any], declared_pools: list[str]
    ) -> list[str] | None:
        """Candidate pools of a job that names languages, best first; else no opinion."""
        job = read_job(requirements, self.settings)
        if job is None:
            return None
        return job_pools(job, declared_pools, self.settings, self.registry.sets())

    # -- events --------------------------------------------------------------------------------

    @hookimpl
    def schedd_node_registered(self, node_id: str, pools: list[str]) -> None:
        """Learn the language set of a node registered here."""
        if self.settings.mode == "langset":
            self._learn(pools, f"node {node_id}")

    def _learn(self, pool_keys: list[str], source: str) -> None:
        was_full = self.registry.full
        for codes in self.registry.learn(pool_keys):
            log.info("language set %s learnt from %s", ",".join(codes), source)
        if self.registry.full and not was_full:
            log.warning("more than %d language sets learnt; ignoring new ones (list the sets "
                        "in [plugins.langset] known_sets)", len(self.registry.sets()))

    # -- services ------------------------------------------------------------------------------

    @hookimpl
    def schedd_configure(self, settings: object) -> None:
        """Take this daemon's settings."""
        if not isinstance(settings, LangsetSettings):  # pragma: no cover - the core ensures it
            raise TypeError(f"settings of {PLUGIN_NAME} are {settings!r}")
        self.configure(settings)

    @hookimpl
    def schedd_services(self, app: Daemon) -> list[Service]:
        """In ``langset`` mode, learn sets from Redis."""
        settings = self.settings
        if settings.mode == "langset" and settings.refresh_interval > 0:
            return [self.serve_set_discovery]
        return []

    async def refresh(self, app: Daemon) -> None:
        """Learn the language sets of every pool listed in Redis (any instance's nodes)."""
        pools = await app.queries.pools()
        self._learn([pool.pool for pool in pools], "the pool list")

    async def serve_set_discovery(
        self, app: Daemon, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the pool list once before reporting started, then every ``refresh_interval``."""
        interval = self.settings.refresh_interval
        first = True
        while True:
            try:
                await self.refresh(app)
            except StoreError as exc:
                log.warning("cannot read the pool list to learn language sets: %s", exc)
            if first:
                task_status.started()
                first = False
            await trio.sleep(interval)
