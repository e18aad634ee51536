"""``sched.toml``: the daemon's settings as frozen attrs classes, validated by one cattrs converter.

This package owns three rules:

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

The package reads in that order: :mod:`~schedd.config.schema` (the sections and
:class:`Config`), :mod:`~schedd.config.validators` (:func:`setting`, :class:`InvalidSetting`),
:mod:`~schedd.config.convert` (the converter and its error lines), :mod:`~schedd.config.load`
(the file, environment overrides, token files) and :mod:`~schedd.config.docs` (the reference).
"""

from __future__ import annotations

from schedd.config.convert import converter, error_lines, make_converter
from schedd.config.docs import config_docs
from schedd.config.load import (
    DEFAULT_PATH,
    ENV_PREFIX,
    NOT_OVERRIDES,
    generate_instance_name,
    load_config,
)
from schedd.config.schema import (
    DEFAULT_PLUGINS,
    PLUGIN_NAME_RE,
    SECTIONS,
    AuthSection,
    Config,
    DrainSection,
    JobsSection,
    LimitsSection,
    NodesSection,
    ReaperSection,
    RedisSection,
    SchedSection,
)
from schedd.config.validators import InvalidSetting, setting

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_PLUGINS",
    "ENV_PREFIX",
    "NOT_OVERRIDES",
    "PLUGIN_NAME_RE",
    "SECTIONS",
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
    "generate_instance_name",
    "load_config",
    "make_converter",
    "setting",
]
