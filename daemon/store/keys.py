"""The only place schedd composes Redis key names.

Every key of a namespace starts with the hash tag ``{<namespace>}:`` so all of them live in one
Redis Cluster slot and every script is atomic there. Python code asks :class:`Keys` for names;
Lua scripts get the same names from :func:`lua_prelude`, which is generated here from the same
table, so a rename happens in one place. Scripts find the prefix from ``KEYS[1]`` (every script's
first key is a namespace key).

Ids (node, job, pool, session, instance) may contain any character but control characters:
the hash tag is the *first* ``{...}`` of a key, which is always the namespace, so braces in ids
cannot move a key to another slot.
"""

from __future__ import annotations

import re

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")

# name -> (suffix template, what the key holds). ``{}`` is the id part.
SCHEMA: dict[str, tuple[str, str]] = {
    "node": ("node:{}", "hash: one node (epoch, owner, capacity, used, state, pools, ...)"),
    "node_jobs": ("node:{}:jobs", "set: job ids assigned to or running on the node"),
    "node_unavail": ("node:{}:unavail", "hash: service -> unix ms until which the node lacks it"),
    "unavail_due": ("unavail_due", "zset: node id -> unix ms at which its next unavailability "
                    "mark ends (the reaper hands the node queued work then)"),
    "nodes": ("nodes", "zset: node id -> unix ms of its last registration (index for queries)"),
    "alive": ("alive", "zset: node id -> unix ms at which its liveness expires"),
    "beats": ("beats", "hash: node id -> '<unix ms> <load> <inflight>' of its last sent heartbeat"),
    "fence": ("fence", "hash: node id -> '<epoch> <owner>' while the node is not offline"),
    "pool": ("pool:{}", "zset: live, non-draining member node id -> free slots"),
    "pools": ("pools", "zset: pool key -> member count (index for queries)"),
    "pool_creator": ("pool_creator", "hash: indexed pool with no member -> principal whose "
                     "queued job put it in the index"),
    "pools_created": ("pools_created", "hash: principal -> how many pools pool_creator holds "
                      "for it"),
    "queue": ("queue:{}", "zset: queued job id -> order (priority first, then age)"),
    "pool_cap": ("pool_cap:{}", "zset: live, non-draining member node id -> its capacity (the "
                 "largest cost a job queued for the pool can have)"),
    "fair": ("fair:{}", "zset: principal with jobs queued for the pool -> virtual start of its "
             "next dispatch (weighted fair share)"),
    "fair_q": ("fair_q:{}\x1f{}", "zset, per pool and principal: the principal's queued job id -> "
               "order (priority first, then age)"),
    "fair_vt": ("fair_vt:{}", "hash, per pool while principals have jobs queued for it: '' -> "
                "virtual time (start of the last dispatch), principal with no job queued -> "
                "finish of its last dispatch"),
    "fair_hold": ("fair_hold", "string: the fair reservation's hold in ms ([tenants] hold; "
                  "absent or 0: off), written at start"),
    "fair_cap": ("fair_cap", "hash: pool key -> total capacity of its live, non-draining members "
                 "(kept where members join and leave pools)"),
    "fair_act": ("fair_act:{}", "zset, per pool while the hold is on: principal -> unix ms of "
                 "its last submit to the pool (active while within the hold; expires with it)"),
    "fair_w": ("fair_w", "hash: principal -> its fair share weight at its last submit, when not "
               "1 (written while the hold is on)"),
    "fair_use": ("fair_use:{}", "hash, per pool: principal -> slots its jobs dispatched from the "
                 "pool hold while the hold is on ('' -> their total)"),
    "fair_held": ("fair_held", "zset: pool whose free slots a reservation held -> unix ms at "
                  "which the earliest holder lapses (the reaper feeds the pool then)"),
    "job": ("job:{}", "hash: one job (state, attempt, node, payload, result, timings, ...)"),
    "job_tried": ("job:{}:tried", "set: node ids that already failed this job"),
    "job_blobs": ("job:{}:blobs", "hash: 'in:<name>' / 'out:<name>' -> the bytes of one binary "
                  "attachment of the job's submit / of its result (names and sizes in the job "
                  "hash: att, out_att; their total bytes: att_bytes)"),
    "job_attempts": ("job:{}:attempts", "list: the attempts of a job that ended without a "
                     "result (attempt, node, why, times), oldest first"),
    "jobs_in": ("jobs_in:{}", "zset: job id -> submit ms, per terminal state or 'active' "
                "(not terminal) (browsing)"),
    "jobs_of": ("jobs_of:{}", "zset: job id -> submit ms, per principal (browsing)"),
    "jobs_on": ("jobs_on:{}", "zset: job id -> submit ms, per node that held an attempt of it "
                "(browsing)"),
    "delayed": ("delayed", "zset: job id -> unix ms at which a delayed or backing-off job is "
                "due (the reaper queues or places it then)"),
    "ended_of": ("ended_of:{}", "zset: retained finished job id -> its finish order (finish "
                 "ms * 1000 + seq mod 1000), per principal (retention bounds, oldest evicted "
                 "first)"),
    "retained": ("retained", "hash: principal -> bytes its retained finished jobs hold "
                 "(results, errors, kept payloads)"),
    "deadlines": ("deadlines", "zset: job id -> unix ms of its current ack/run/queue deadline"),
    "gc": ("gc", "zset: 'j:<job>' / 'n:<node>' -> unix ms after which it is removed"),
    "session": ("session:{}", "string (PX ttl): node id that served the session last"),
    "order": ("order:{}", "hash: one ordered session, id '<principal>\\x1f<session>': next (the "
              "lowest seq neither delivered nor skipped), client (the instance its results go "
              "to, '' for none), gap_ms (how long a missing seq may hold later results)"),
    "order_held": ("order:{}:held", "zset: an ordered session's results waiting for a lower seq "
                   "(and a skipped report), '<seq> <next seq after it> <message>' -> seq"),
    "order_seqs": ("order:{}:seqs", "hash: seq -> id of the job accepted for it in an ordered "
                   "session"),
    "order_gaps": ("order_gaps", "zset: ordered session id -> unix ms at which its missing seqs "
                   "are reported skipped (while later results wait)"),
    "counts": ("counts", "hash: jobs per current state, lifetime totals, epoch and order counters"),
    "exclusions": ("exclusions", "hash: selection exclusion reason -> count"),
    "finished": ("finished", "list: the most recent finished jobs (id, state, node, timings)"),
    "inbox": ("inbox:{}", "stream: deliveries (assign, cancel, drain, progress, done)"),
    "instances": ("instances", "zset: instance id -> unix ms at which its presence expires"),
    "owned": ("owned:{}", "set: node ids an instance owns and has not taken offline"),
    "usage": ("usage:{}", "hash: one principal's usage kept by the scripts (queued, inflight, "
              "bytes held, refusals 'refused:<kind>'), its in-flight cap 'cap_inflight' as its "
              "last submit gave it, and its submit token bucket 'tokens' / 't_tok' (unix ms)"),
    "tenants": ("tenants", "zset: principal -> unix ms of its last submit (index of usage hashes)"),
    "pool_limits": ("pool_limits", "hash: pool key -> dispatch rate per second of the pool "
                    "(written at start and reload)"),
    "pool_bucket": ("pool_bucket:{}", "hash: a rate-limited pool's dispatch token bucket "
                    "('tokens', 't_tok' unix ms)"),
    "rate_held": ("rate_held", "zset: rate-limited pool with queued jobs held -> unix ms at which "
                  "its bucket has a token again (the reaper feeds the pool then)"),
    "clients": ("clients:{}", "hash: connection id -> JSON of one client connection an instance "
                "holds (principal, peer, protocol, name, since)"),
}


def order_id(principal: str, session_id: str) -> str:
    """The id of an ordered session: sessions are named per principal, and ids hold no control
    character, so the unit separator joins the two unambiguously (as the scripts do)."""
    return principal + "\x1f" + session_id


def check_namespace(namespace: str) -> str:
    if not NAMESPACE_RE.match(namespace):
        raise ValueError(
            f"namespace {namespace!r} must be 1-64 characters of letters, digits, '_', '.', '-'"
        )
    return namespace


class Keys:
    """Key names for one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = check_namespace(namespace)
        self.prefix = "{" + namespace + "}:"

    def _k(self, name: str, ident: str = "") -> str:
        return self.prefix + SCHEMA[name][0].format(ident)

    def node(self, node_id: str) -> str:
        return self._k("node", node_id)

    def node_jobs(self, node_id: str) -> str:
        return self._k("node_jobs", node_id)

    def node_unavail(self, node_id: str) -> str:
        return self._k("node_unavail", node_id)

    def pool(self, pool: str) -> str:
        return self._k("pool", pool)

    def queue(self, pool: str) -> str:
        return self._k("queue", pool)

    def pool_cap(self, pool: str) -> str:
        return self._k("pool_cap", pool)

    def fair(self, pool: str) -> str:
        return self._k("fair", pool)

    def fair_q(self, pool: str, principal: str) -> str:
        """Two ids joined by the unit separator, which no id contains (ids have no control
        characters), so distinct (pool, principal) pairs never share a key."""
        return self.prefix + SCHEMA["fair_q"][0].format(pool, principal)

    def fair_vt(self, pool: str) -> str:
        return self._k("fair_vt", pool)

    def job(self, job_id: str) -> str:
        return self._k("job", job_id)

    def job_tried(self, job_id: str) -> str:
        return self._k("job_tried", job_id)

    def job_blobs(self, job_id: str) -> str:
        return self._k("job_blobs", job_id)

    def job_attempts(self, job_id: str) -> str:
        return self._k("job_attempts", job_id)

    def jobs_in(self, state: str) -> str:
        return self._k("jobs_in", state)

    def jobs_of(self, principal: str) -> str:
        return self._k("jobs_of", principal)

    def jobs_on(self, node_id: str) -> str:
        return self._k("jobs_on", node_id)

    def session(self, session_id: str) -> str:
        return self._k("session", session_id)

    def order(self, order_id: str) -> str:
        return self._k("order", order_id)

    def order_held(self, order_id: str) -> str:
        return self._k("order_held", order_id)

    def order_seqs(self, order_id: str) -> str:
        return self._k("order_seqs", order_id)

    @property
    def order_gaps(self) -> str:
        return self._k("order_gaps")

    def inbox(self, instance: str) -> str:
        return self._k("inbox", instance)

    def owned(self, instance: str) -> str:
        return self._k("owned", instance)

    def clients(self, instance: str) -> str:
        return self._k("clients", instance)

    def usage(self, principal: str) -> str:
        return self._k("usage", principal)

    def pool_bucket(self, pool: str) -> str:
        return self._k("pool_bucket", pool)

    @property
    def tenants(self) -> str:
        return self._k("tenants")

    @property
    def pool_limits(self) -> str:
        return self._k("pool_limits")

    @property
    def rate_held(self) -> str:
        return self._k("rate_held")

    @property
    def fair_hold(self) -> str:
        return self._k("fair_hold")

    @property
    def fair_cap(self) -> str:
        return self._k("fair_cap")

    @property
    def fair_held(self) -> str:
        return self._k("fair_held")

    def fair_act(self, pool: str) -> str:
        return self._k("fair_act", pool)

    def fair_use(self, pool: str) -> str:
        return self._k("fair_use", pool)

    @property
    def fair_w(self) -> str:
        return self._k("fair_w")

    @property
    def nodes(self) -> str:
        return self._k("nodes")

    @property
    def alive(self) -> str:
        return self._k("alive")

    @property
    def beats(self) -> str:
        return self._k("beats")

    @property
    def fence(self) -> str:
        return self._k("fence")

    @property
    def pools(self) -> str:
        return self._k("pools")

    @property
    def pool_creator(self) -> str:
        return self._k("pool_creator")

    @property
    def pools_created(self) -> str:
        return self._k("pools_created")

    @property
    def unavail_due(self) -> str:
        return self._k("unavail_due")

    def ended_of(self, principal: str) -> str:
        return self._k("ended_of", principal)

    @property
    def delayed(self) -> str:
        return self._k("delayed")

    @property
    def retained(self) -> str:
        return self._k("retained")

    @property
    def deadlines(self) -> str:
        return self._k("deadlines")

    @property
    def gc(self) -> str:
        return self._k("gc")

    @property
    def counts(self) -> str:
        return self._k("counts")

    @property
    def finished(self) -> str:
        return self._k("finished")

    @property
    def exclusions(self) -> str:
        return self._k("exclusions")

    @property
    def instances(self) -> str:
        return self._k("instances")


def lua_prelude() -> str:
    """Lua code defining ``K.<name>(id)`` for every key and ``bind_keys(first_key)``, which sets
    the namespace prefix from a script's ``KEYS[1]`` at the start of every call (it returns an
    error reply when that key carries no namespace tag). The code reads no global at load time,
    as a Redis Function library must not."""
    lines = [
        "-- generated by schedd/store/keys.py: the only place key names are composed",
        "local K = {}",
        "local function bind_keys(first_key)",
        "  K.prefix = string.match(first_key, '^({[^}]*}:)')",
        "  if not K.prefix then",
        "    return redis.error_reply('E_BAD_ARG KEYS[1] carries no namespace tag')",
        "  end",
        "end",
    ]
    for name, (template, _doc) in SCHEMA.items():
        head, _, tail = template.partition("{}")
        if template.count("{}") == 2:  # two ids joined by a control character (Lua: decimal)
            mid, _, tail = tail.partition("{}")
            sep = "".join(f"\\{ord(c):03d}" if ord(c) < 32 else c for c in mid)
            expr = f"K.prefix .. {head!r} .. a .. '{sep}' .. b" + (f" .. {tail!r}" if tail else "")
            lines.append(f"K.{name} = function(a, b) return {expr} end")
        elif "{}" in template:
            expr = f"K.prefix .. {head!r} .. id" + (f" .. {tail!r}" if tail else "")
            lines.append(f"K.{name} = function(id) return {expr} end")
        else:
            lines.append(f"K.{name} = function() return K.prefix .. {template!r} end")
    return "\n".join(lines).replace('"', "'") + "\n"
