"""The sections of ``sched.toml`` and :class:`Config`: every setting, its default and its rule."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

import attrs

from schedd.config.validators import (
    _DURATION,
    _admin_tokens,
    _at_least,
    _between,
    _fair_weights,
    _greater_than,
    _hidden_tokens,
    _matching,
    _node_id_patterns,
    _non_empty_strings,
    _one_of,
    _pool_rates,
    _principal_names,
    _unset_or,
    _url_without_password,
    setting,
)
from schedd.protocol import MAX_SECONDS

#: Plugin names are entry-point names; lower-case so ``SCHEDD_PLUGINS__<NAME>__…`` can address them.
PLUGIN_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
DEFAULT_PLUGINS: Final = ("transport_ws", "transport_tcp")

_NAMESPACE_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# Instance names go into Redis key names (inbox streams), so no braces (hash tags) or spaces.
_INSTANCE_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{0,128}$")
_URL_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_MAX_FRAME_LIMIT: Final = 2**32 - 1  # the TCP framing's 4-byte length prefix


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
    max_result_ttl: float = setting(
        86400.0, "most seconds a submit's result_ttl may keep its finished job",
        _between(0, MAX_SECONDS))
    keep_payload: bool = setting(
        False, "keep the payload of a job that ended done (false: dropped at its finish; a "
        "submit's keep_payload keeps it for that job)")
    retain_count: int = setting(
        10000, "finished jobs kept per principal; its oldest are removed first", _at_least(1))
    retain_bytes: int = setting(
        1 << 30, "bytes of results, errors and kept payloads kept per principal; its oldest "
        "finished jobs are removed first", _at_least(1))
    max_delay: float = setting(
        7 * 86400.0, "most seconds ahead a submit's delay or not_before may put its job",
        _between(0, MAX_SECONDS))
    backoff_base: float = setting(
        1.0, "seconds of a retryable failure's first backoff (doubled per attempt)", *_DURATION)
    backoff_max: float = setting(
        60.0, "most seconds of a retryable failure's backoff", *_DURATION)
    session_gap_timeout: float = setting(
        30.0, "seconds a missing seq of an ordered session may hold its later results before "
        "it is reported skipped (a submit may give its own gap_timeout)", _greater_than(0)
    )


@attrs.frozen
class TenantsSection:
    """``[tenants]``: how principals share the pools (docs/decisions/0023-fair-share.md)."""

    weights: Mapping[str, float] = setting(
        {},
        "principal (token:<8 hex>) -> fair share weight, 0.001..1000; unlisted: 1. When several "
        "principals have jobs queued for a pool, each gets freed slots in proportion to its "
        "weight (a job costing n slots counts n)",
        _fair_weights,
    )
    hold: float = setting(
        0.0,
        "seconds a principal counts as active in a pool after its last submit there; while "
        "active it is guaranteed its weighted part of the pool's slots, held free for it "
        "(docs/decisions/0029-fair-reservation.md). 0: off, freed slots always go to queued work",
        _between(0, 3600),
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
    admin_tokens: tuple[str, ...] = setting(
        (),
        "tokens of operators (at least 16 characters, none a node or client token): a client "
        "presenting one is authenticated as its principal and may also drain, undrain, cancel "
        "and requeue (docs/operations.md); none: no operator actions over the wire",
        _admin_tokens,
        shown=_hidden_tokens,
    )
    node_token_file: str = setting("", "file of node tokens: one per line, # comments")
    client_token_file: str = setting("", "file of client tokens: one per line, # comments")
    admin_token_file: str = setting("", "file of admin tokens: one per line, # comments")
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
    max_attachment: int = setting(
        4194304, "largest binary attachment in bytes (a larger one is refused and closes the "
        "connection)", _between(1, _MAX_FRAME_LIMIT - 1)
    )
    max_attachments: int = setting(
        8388608, "largest sum of one message's binary attachments in bytes (a message over it "
        "is refused; the connection stays)", _at_least(1)
    )
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
    max_batch: int = setting(
        256, "most messages one array frame may hold; a client's run of plain submits is "
        "stored with one script call per this many", _between(1, 4096)
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


_LIMIT: Final = (_unset_or(_at_least(1)),)
_RATE: Final = (_unset_or(_greater_than(0), _between(0, 1e6)),)


@attrs.frozen
class PrincipalQuotas:
    """One principal's quotas in ``[quotas.principals."<principal>"]``: each one it sets
    replaces the default's; the ones it leaves out are the default's."""

    max_in_flight: int | None = setting(None, "jobs assigned or running at once", *_LIMIT)
    max_queued: int | None = setting(None, "jobs waiting in the queues", *_LIMIT)
    max_payload_bytes: int | None = setting(
        None, "payload bytes of the jobs not yet ended", *_LIMIT)
    submit_rate: float | None = setting(None, "submits per second (a token bucket)", *_RATE)
    submit_burst: int | None = setting(
        None, "submits at once above the rate (default: one second's worth, at least 1)",
        *_LIMIT)


@attrs.frozen
class QuotasSection:
    """``[quotas]``: what one principal may hold and submit, and the pools' dispatch rates.

    A limit left out is no limit; a limit given must be >= 1 (a rate > 0): there is no way to
    write "refuse everything", remove the principal's token instead. The defaults apply to every
    principal; ``[quotas.principals."token:ab12cd34"]`` overrides them for one.
    """

    max_in_flight: int | None = setting(
        None, "jobs of one principal assigned or running at once (more wait queued)", *_LIMIT)
    max_queued: int | None = setting(
        None, "jobs of one principal waiting in the queues (more: E_QUOTA)", *_LIMIT)
    max_payload_bytes: int | None = setting(
        None, "payload bytes of one principal's jobs not yet ended (more: E_QUOTA)", *_LIMIT)
    submit_rate: float | None = setting(
        None, "submits per second of one principal, a token bucket shared by every instance "
        "(more: E_RATE_LIMITED with retry_after)", *_RATE)
    submit_burst: int | None = setting(
        None, "submits at once above the rate (default: one second's worth, at least 1)",
        *_LIMIT)
    principals: Mapping[str, PrincipalQuotas] = setting(
        {}, "principal -> its own quotas (a table of the settings above)", _principal_names)
    pool_rates: Mapping[str, float] = setting(
        {}, "pool key -> dispatches per second (jobs over it stay queued)", _pool_rates)


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
    tenants: TenantsSection = attrs.field(factory=TenantsSection)
    reaper: ReaperSection = attrs.field(factory=ReaperSection)
    auth: AuthSection = attrs.field(factory=AuthSection)
    limits: LimitsSection = attrs.field(factory=LimitsSection)
    drain: DrainSection = attrs.field(factory=DrainSection)
    quotas: QuotasSection = attrs.field(factory=QuotasSection)
    plugins: tuple[str, ...] = DEFAULT_PLUGINS
    plugin_tables: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    env_overrides: dict[str, str] = attrs.field(factory=dict)


SECTIONS: Final[dict[str, type[Any]]] = {
    field.name: field.type
    for field in attrs.fields(attrs.resolve_types(Config))
    if field.type is not None and attrs.has(field.type)
}
_CONFIG_ONLY_FIELDS: Final = ("plugins", "plugin_tables", "env_overrides")
