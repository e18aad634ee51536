"""SIGHUP: which parts of a re-read configuration apply at once, and which need a restart."""

from __future__ import annotations

import attrs

from schedd.config import Config


def reloaded(current: Config, new: Config, instance: str) -> tuple[Config, list[str]]:
    """The configuration to run with after a reload (``current`` with ``new``'s tokens, limits
    and log level), and the sections whose changes need a restart."""
    restart_needed = [
        name for name in ("redis", "nodes", "jobs", "reaper", "drain", "quotas", "tenants")
        if getattr(new, name) != getattr(current, name)
    ]
    # an empty instance name is generated anew by every load: not a change
    generated = new.schedd.instance.rsplit("-", 1)[0] == instance.rsplit("-", 1)[0]
    same = attrs.evolve(new.schedd, log_level=current.schedd.log_level,
                        instance=instance if generated else new.schedd.instance)
    if same != current.schedd:
        restart_needed.append("schedd")
    if new.plugins != current.plugins or new.plugin_tables != current.plugin_tables:
        restart_needed.append("plugins")
    applied = attrs.evolve(current, auth=new.auth, limits=new.limits,
                           schedd=attrs.evolve(current.schedd, log_level=new.schedd.log_level))
    return applied, restart_needed
