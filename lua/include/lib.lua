-- Shared helpers included (by the script registry) at the top of every script after the key
-- prelude. Rules of this file:
--  * every state change of a job is counted by count_state, so the per-state counts stay exact;
--  * every change of a node's used slots goes through node_slots, so pool scores (free slots)
--    always equal capacity - used for online nodes and nodes outside pools hold no score;
--  * deliveries for the calling instance are returned in the reply (fast path); deliveries for
--    any other instance are appended to its inbox stream in the same script, so nothing an
--    instance must deliver can be lost between scripts;
--  * every job state change and every node taken offline is also returned as an event, so the
--    instance whose script made the change tells its plugins, exactly once.

-- No global is read at load time (a Redis Function library may not): cjson, string, table and
-- the rest are looked up when a function runs.
local function unpack_list(list)
  return (table.unpack or unpack)(list)
end
local TERMINAL = {done = true, failed = true, canceled = true, timed_out = true}
-- Candidates looked at per pool or queue head: 16, which bounds every selection. Given to
-- redis.call as the last index of a range (0..15) or as a count, as text.
local SCAN_LAST = '15'
local SCAN_COUNT = '16'
local FINISHED_KEPT = 2000 -- recent completions kept in K.finished() (at least)
local FINISHED_SLACK = 500  -- trimmed back to FINISHED_KEPT once this many more have come

-- A stored integer field (written by these scripts as decimal text) as JSON: '0' when absent.
local function num_s(v)
  if v == nil or v == '' then return '0' end
  return v
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as the decimal string Redis and the JSON decoder expect. Cheaper than letting Lua
-- format a number (tostring and a number argument to redis.call both go through '%.14g').
local function int_s(n)
  return string.format('%d', n)
end
-- Constant and integer arguments of redis.call are given as text here: a Lua number is formatted
-- with '%.17g' on every call, dearer than int_s (docs/decisions/0003-lean-job-scripts.md).

local function err(code, msg)
  return redis.error_reply(code .. ' ' .. msg)
end

-- A hash read into a table records at h[0] what the read covered: true for every field
-- (hgetall), else the names read (hmget: the list it was given, made a set when first asked).
-- A field absent from the table but covered is absent from the hash, so the helpers
-- (job_field, need) do not read it again. (h[0] is not a field: hash fields are strings.)

-- The named fields of a hash as a table (absent fields stay nil); nil when the first is absent.
local function hmget(key, names)
  local vals = redis.call('HMGET', key, unpack_list(names))
  if not vals[1] then return nil end
  local h = {}
  for i = 1, #names do
    if vals[i] then h[names[i]] = vals[i] end
  end
  h[0] = names
  return h
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  h[0] = true
  return h
end

-- The set of the fields the table's reads covered, to look up or add to (true: all of them).
-- hmget's list of names (the caller's, never changed) becomes a set of the table's own here.
local function read_set(h)
  local read = h[0]
  if read == nil then
    read = {}
    h[0] = read
  elseif read ~= true and read[1] then
    local set = {}
    for _, n in ipairs(read) do set[n] = true end
    h[0], read = set, set
  end
  return read
end

-- Whether the read that made the table covered the field (then its absence is the hash's).
local function covered(h, name)
  local read = h[0]
  if read == true then return true end
  if read == nil then return false end
  if read[1] then read = read_set(h) end
  return read[name] == true
end

-- A field of a job: as read, nil when the read covered it and the hash lacks it, else read now.
local function job_field(job_id, job, name)
  local v = job[name]
  if v == nil and not covered(job, name) then
    v = redis.call('HGET', K.job(job_id), name) or nil
    job[name] = v
    local read = read_set(job)
    if read ~= true then read[name] = true end
  end
  return v
end

-- Read into the job table, in one HMGET, those of the named fields it does not hold yet (and
-- that the read which made it did not cover). No command when it holds them all.
local function need(job_id, job, names)
  local read = job[0]
  if read == true then return end
  local missing, n = nil, 0
  for i = 1, #names do
    local name = names[i]
    if job[name] == nil then
      if read and read[1] then read = read_set(job) end
      if not (read and read[name]) then
        missing = missing or {}
        n = n + 1
        missing[n] = name
      end
    end
  end
  if n == 0 then return end
  local vals = redis.call('HMGET', K.job(job_id), unpack_list(missing))
  read = read_set(job)
  for i = 1, n do
    local name = missing[i]
    if vals[i] then job[name] = vals[i] end
    read[name] = true
  end
end

local CALLER = '' -- set by each script from its ARGV: the calling instance
local LOCAL = {}  -- deliveries returned to the caller
local EVENTS = {} -- {'job', id, state, attempt, node} / {'node_offline', id, reason}

-- msg: a table to encode, or a message already encoded as JSON text.
local function deliver(instance, msg)
  local encoded = type(msg) == 'string' and msg or cjson.encode(msg)
  if instance == CALLER then
    LOCAL[#LOCAL + 1] = encoded
  elseif instance and instance ~= '' then
    redis.call('XADD', K.inbox(instance), '*', 'd', encoded)
  end
end

local function exclusion(reason)
  redis.call('HINCRBY', K.exclusions(), reason, '1')
end

-- Usage per principal (K.usage(principal)): 'queued' counts its queued jobs, 'inflight' its
-- assigned and running ones, 'bytes' the payload bytes ('pbytes' of the job hash) of its jobs
-- that are not terminal. count_state keeps them, so every path that changes a job's state keeps
-- them exact: they go back to zero when the principal's last job ends, however it ends.
-- (a delayed job waits as a queued one does: it counts as queued)
local USAGE_CLASS = {delayed = 'queued', queued = 'queued', assigned = 'inflight',
  running = 'inflight'}
local USAGE_FIELDS = {'principal', 'pbytes'}
local function usage_state(job_id, old, new, job)
  local a, b = USAGE_CLASS[old or ''], USAGE_CLASS[new]
  if a == b then return end
  local v
  if job then
    if job.principal == nil or job.pbytes == nil then need(job_id, job, USAGE_FIELDS) end
    v = {job.principal, job.pbytes}
  else
    v = redis.call('HMGET', K.job(job_id), 'principal', 'pbytes')
  end
  local ukey = K.usage(v[1] or '')
  if a and redis.call('HINCRBY', ukey, a, '-1') < 0 then redis.call('HSET', ukey, a, '0') end
  if b then redis.call('HINCRBY', ukey, b, '1') end
  if (a == nil) ~= (b == nil) and v[2] then
    if redis.call('HINCRBY', ukey, 'bytes', b and v[2] or ('-' .. v[2])) < 0 then
      redis.call('HSET', ukey, 'bytes', '0')
    end
  end
end

-- Whether a job of the principal costing cost more in-flight jobs may be dispatched now: its
-- in-flight jobs plus cost stay within the cap its last submit stored ('cap_inflight'; none
-- when absent). Every dispatch path asks this before it takes a queued or new job.
local function principal_can_run(principal, cost)
  local v = redis.call('HMGET', K.usage(principal or ''), 'inflight', 'cap_inflight')
  if not v[2] or v[2] == '' then return true end
  if (tonumber(v[1]) or 0) + (cost or 1) <= tonumber(v[2]) then return true end
  redis.call('HINCRBY', K.exclusions(), 'principal_in_flight', '1')
  return false
end

-- A token bucket in hash key (fields 'tokens', 't_tok' in unix ms) filling at rate per second
-- up to burst; full when absent. Returns the tokens it holds now (not written).
local function bucket_level(key, rate, burst, now)
  local b = redis.call('HMGET', key, 'tokens', 't_tok')
  local tokens, t = tonumber(b[1]), tonumber(b[2])
  if not tokens or not t then return burst end
  local dt = now - t
  if dt < 0 then dt = 0 end -- another server's clock behind: no refill, no debt
  tokens = tokens + dt * rate / 1000
  if tokens > burst then tokens = burst end
  return tokens
end

-- Whether a pool may dispatch one job now under its rate (K.pool_limits(): '<rate> <burst>'); a
-- pool with no rate always may. take: debit the token. A pool out of tokens is entered in
-- K.rate_held() at the time its next token comes, where the reaper hands its members queued
-- work (one entry per pool: no polling). Returns whether it may, and the pool's rate as read
-- (false: none), which a check gives to the take that follows it in the same call (lim), so
-- the rate is read once.
local function pool_rate_ok(pool, now, take, lim)
  if lim == nil then lim = redis.call('HGET', K.pool_limits(), pool) end
  if not lim then return true, false end
  local sp = string.find(lim, ' ', 1, true)
  local rate, burst = tonumber(string.sub(lim, 1, sp - 1)), tonumber(string.sub(lim, sp + 1))
  local key = K.pool_bucket(pool)
  local tokens = bucket_level(key, rate, burst, now)
  if tokens < 1 then
    redis.call('ZADD', K.rate_held(), 'NX', int_s(now + math.ceil((1 - tokens) * 1000 / rate)),
      pool)
    redis.call('HINCRBY', K.exclusions(), 'pool_rate', '1')
    return false
  end
  if take then
    redis.call('HSET', key, 'tokens', tostring(tokens - 1), 't_tok', int_s(now))
  end
  return true, lim
end

-- The event of a job's state change, for the daemon's listeners (attempt: a number).
-- Built as text: cjson formats numbers with '%.14g', which costs more than the whole string.
local function job_event(job_id, state, attempt, node)
  EVENTS[#EVENTS + 1] = '["job",' .. cjson.encode(job_id) .. ',"' .. state .. '",'
    .. int_s(attempt) .. ',' .. cjson.encode(node) .. ']'
end

-- The counts and the event of a state change whose 'state' field the caller has written
-- itself (with the job's attempt and node as they now are in its hash).
-- K.counts() holds the jobs per non-terminal state; a terminal state's are the entries of
-- K.jobs_in(state) (its retained jobs: Queries.counts reads ZCARD), so ending a job and
-- removing it write no count of the state, only the 'total:<state>' lifetime counter.
-- job: the job's table, when the caller has one: the fields usage needs are taken from it (and
-- read into it when missing), and a state it passed through uncounted (pass_state) is left
-- from the state the counts hold (job._counted).
local function count_state(job_id, old, new, attempt, node, job)
  local from = old
  if job and job._counted then
    from = job._counted
    job._counted = nil
  elseif old == new then
    return
  end
  if from ~= new then
    usage_state(job_id, from, new, job)
    if from and from ~= '' and not TERMINAL[from] then
      redis.call('HINCRBY', K.counts(), from, '-1')
    end
    if TERMINAL[new] then
      redis.call('HINCRBY', K.counts(), 'total:' .. new, '1')
    else
      redis.call('HINCRBY', K.counts(), new, '1')
    end
  end
  attempt = tonumber(attempt) or 0
  if new == 'queued' then attempt = attempt + 1 end -- a queued job waits for its next attempt
  job_event(job_id, new, attempt, node or '')
end

-- Fair reservation -------------------------------------------------------------------------------

-- With [tenants] hold > 0 (K.fair_hold(), ms, written at start; docs/decisions/
-- 0029-fair-reservation.md), a principal that submitted to a pool within the last hold is active
-- there, and each active principal Q is guaranteed g(Q) = floor(C * w(Q) / sum of active w)
-- slots, C the pool's capacity (K.fair_cap()). A dispatch of a job of principal P costing c from
-- the pool is allowed when use(P) + c <= g(P), or when the free slots left, C - U - c (U: the
-- pool's total use), cover every other active principal's unused guarantee. Otherwise the job
-- stays queued and the slot free (the reservation); the pool is entered in K.fair_held() at the
-- earliest lapse of those principals, where the reaper feeds its members. Invariants:
--  * K.fair_cap()[pool] is the sum of K.pool_cap(pool)'s scores (pool_join, pool_leave);
--  * a job holding a slot dispatched while the hold was on has 'fpool' (the pool it came from),
--    counted in K.fair_use(pool) (its principal and '') until fair_release takes it off, once,
--    on whichever path frees its slot;
--  * only the FAIR_ACTIVE most recently active principals of a pool count (a bounded read).
-- With the hold off a dispatch costs one GET per call (the hold, read once per call).
local FAIR_ACTIVE = 8
local FAIR_HOLD = nil -- the hold in ms, read once per call (each call's preamble resets it)
local FAIR_FROM = nil -- the pool the job being dispatched came from (set by select_node and
                      -- feed_node, taken by the assign that follows)

local function fair_hold_ms()
  if FAIR_HOLD == nil then
    FAIR_HOLD = tonumber(redis.call('GET', K.fair_hold()) or '0') or 0
  end
  return FAIR_HOLD
end

-- An accepted submit of the principal to its pools: it is active there for the hold from now.
-- weight_s: its weight as the job records it (text).
local function fair_active(pools, principal, weight_s, now)
  local hold = fair_hold_ms()
  if hold <= 0 then return end
  for _, pool in ipairs(pools) do
    local akey = K.fair_act(pool)
    redis.call('ZADD', akey, int_s(now), principal)
    redis.call('ZREMRANGEBYSCORE', akey, '-inf', int_s(now - hold))
    redis.call('PEXPIRE', akey, int_s(hold))
  end
  if (redis.call('HGET', K.fair_w(), principal) or '1') ~= weight_s then
    if weight_s == '1' then
      redis.call('HDEL', K.fair_w(), principal)
    else
      redis.call('HSET', K.fair_w(), principal, weight_s)
    end
  end
end

-- Whether a job of the principal costing cost may be dispatched from the pool now (above).
-- submitting: the principal is submitting now (active whether or not recorded yet).
local function fair_allow(pool, principal, cost, now, submitting)
  local hold = fair_hold_ms()
  if hold <= 0 then return true end
  local since = now - hold
  local akey = K.fair_act(pool)
  local act = redis.call('ZRANGE', akey, '+inf', '(' .. int_s(since), 'BYSCORE', 'REV',
    'LIMIT', '0', int_s(FAIR_ACTIVE), 'WITHSCORES')
  local names, last, mine = {}, {}, submitting
  for i = 1, #act, 2 do
    names[#names + 1] = act[i]
    last[act[i]] = tonumber(act[i + 1])
    if act[i] == principal then mine = true end
  end
  if not last[principal] then
    if mine then
      names[#names + 1] = principal
    else
      local s = redis.call('ZSCORE', akey, principal)
      if s and tonumber(s) > since then
        names[#names + 1] = principal
        mine = true
      end
    end
  end
  if #names == 0 or (#names == 1 and mine) then return true end
  local n = #names
  names[n + 1] = ''
  local use = redis.call('HMGET', K.fair_use(pool), unpack_list(names))
  local w = redis.call('HMGET', K.fair_w(), unpack_list(names))
  local cap = tonumber(redis.call('HGET', K.fair_cap(), pool)) or 0
  local total_w = 0
  for i = 1, n do
    w[i] = tonumber(w[i]) or 1
    total_w = total_w + w[i]
  end
  local need, lapse = 0, nil
  for i = 1, n do
    local g = math.floor(cap * w[i] / total_w)
    local u = tonumber(use[i]) or 0
    if names[i] == principal then
      if u + cost <= g then return true end
    elseif g > u then
      need = need + (g - u)
      local ends = last[names[i]] + hold
      if not lapse or ends < lapse then lapse = ends end
    end
  end
  if need == 0 or cap - (tonumber(use[n + 1]) or 0) - cost >= need then return true end
  redis.call('ZADD', K.fair_held(), 'LT', int_s(lapse), pool)
  redis.call('HINCRBY', K.exclusions(), 'fair_hold', '1')
  return false
end

-- The job being assigned came from FAIR_FROM (if set): with the hold on, its slots count in
-- the pool's use and the job records the pool ('fpool').
local function fair_took(job_id, job, cost)
  local pool = FAIR_FROM
  FAIR_FROM = nil
  if not pool or fair_hold_ms() <= 0 then return end
  local principal = job.principal or redis.call('HGET', K.job(job_id), 'principal') or ''
  local ukey = K.fair_use(pool)
  redis.call('HINCRBY', ukey, principal, int_s(cost))
  redis.call('HINCRBY', ukey, '', int_s(cost))
  redis.call('HSET', K.job(job_id), 'fpool', pool)
end

-- The job's slot was freed: its use (if counted) leaves its pool's, once. Returns the job's
-- cost. job: the job's table; what it lacks of 'fpool', 'cost' and 'principal' is read into it.
local function fair_release(job_id, job)
  need(job_id, job, {'fpool', 'cost', 'principal'})
  local cost = tonumber(job.cost) or 1
  local pool = job.fpool
  if not pool or pool == '' then return cost end
  redis.call('HDEL', K.job(job_id), 'fpool')
  job.fpool = nil
  local principal = job.principal or ''
  local c = int_s(-cost)
  local ukey = K.fair_use(pool)
  if redis.call('HINCRBY', ukey, principal, c) <= 0 then redis.call('HDEL', ukey, principal) end
  if redis.call('HINCRBY', ukey, '', c) <= 0 then redis.call('HDEL', ukey, '') end
  return cost
end

-- A member joined or left the pool (its capacity counted from / taken off the pool's total).
local function fair_cap_add(pool, delta)
  if delta == 0 then return end
  if redis.call('HINCRBY', K.fair_cap(), pool, int_s(delta)) <= 0 then
    redis.call('HDEL', K.fair_cap(), pool)
  end
end

-- The job passes through state `new` within this call and leaves it by a later count_state of
-- the same call (an accept that came with its result): the event goes now, the counts and usage
-- only move once, from the state they hold to where the job ends up. The caller writes the
-- state field, if at all.
local function pass_state(job_id, job, new)
  if job.state == new then return end
  job_event(job_id, new, tonumber(job.attempt) or 0, job.node or '')
  job._counted = job._counted or job.state
  job.state = new
end

-- Pools ---------------------------------------------------------------------------------------

local function node_pools(node)
  if not node or not node.pools or node.pools == '' then return {} end
  return cjson.decode(node.pools)
end

-- The pools index (K.pools()) holds exactly the pools that have a member or a queued job. A pool
-- a queued job put in the index while it had no member is charged to the job's principal
-- (K.pool_creator(), counted in K.pools_created()) until a node joins it or it leaves the index,
-- so job_submit can bound how many such pools one principal keeps in existence.

-- The pool is no longer charged to the principal whose queued job put it in the index.
local function pool_uncharge(pool)
  local principal = redis.call('HGET', K.pool_creator(), pool)
  if principal then
    redis.call('HDEL', K.pool_creator(), pool)
    if redis.call('HINCRBY', K.pools_created(), principal, '-1') <= 0 then
      redis.call('HDEL', K.pools_created(), principal)
    end
  end
end

-- capacity: the node's slots, kept in K.pool_cap(pool) (the largest cost the pool can run).
local function pool_join(pool, node_id, free, capacity)
  local before = redis.call('ZSCORE', K.pool_cap(pool), node_id)
  redis.call('ZADD', K.pool_cap(pool), capacity, node_id)
  fair_cap_add(pool, tonumber(capacity) - (tonumber(before) or 0))
  if redis.call('ZADD', K.pool(pool), free, node_id) == 1 then
    if tonumber(redis.call('ZINCRBY', K.pools(), '1', pool)) == 1 then pool_uncharge(pool) end
  end
end

-- A pool with no member and no queued job leaves the index.
local function pool_drop_if_empty(pool)
  local members = redis.call('ZSCORE', K.pools(), pool)
  if (not members or tonumber(members) <= 0) and redis.call('EXISTS', K.queue(pool)) == 0 then
    redis.call('ZREM', K.pools(), pool)
    pool_uncharge(pool)
  end
end

local function pool_leave(pool, node_id)
  local before = redis.call('ZSCORE', K.pool_cap(pool), node_id)
  if before then
    redis.call('ZREM', K.pool_cap(pool), node_id)
    fair_cap_add(pool, -tonumber(before))
  end
  if redis.call('ZREM', K.pool(pool), node_id) == 1 then
    if tonumber(redis.call('ZINCRBY', K.pools(), '-1', pool)) <= 0 then
      pool_drop_if_empty(pool)
    end
  end
end

-- Change a node's used slots by delta and refresh its score in every pool it serves.
-- vals: the node's {state, capacity, pools} when the caller has just read them (else read here).
local function node_slots(node_id, delta, vals)  -- returns used, {state, capacity, pools}
  local nkey = K.node(node_id)
  local used = tonumber(redis.call('HINCRBY', nkey, 'used', int_s(delta)))
  if used < 0 then
    redis.call('HSET', nkey, 'used', '0')
    used = 0
  end
  vals = vals or redis.call('HMGET', nkey, 'state', 'capacity', 'pools')
  if vals[1] == 'online' then
    local free = tonumber(vals[2]) - used
    if free < 0 then free = 0 end
    local free_s = int_s(free)
    for _, pool in ipairs(cjson.decode(vals[3])) do
      redis.call('ZADD', K.pool(pool), 'XX', free_s, node_id)
    end
  end
  return used, vals
end

-- Eligibility of a node for a job: alive, not failed it before, every needed service present.
-- fresh: the job was never assigned (it has no tried set to look at).
local function eligible(node_id, job_id, services, now, fresh)
  local exp = redis.call('ZSCORE', K.alive(), node_id)
  if not exp or tonumber(exp) <= now then
    exclusion('dead')
    return false
  end
  if not fresh and redis.call('SISMEMBER', K.job_tried(job_id), node_id) == 1 then
    exclusion('failed_before')
    return false
  end
  if #services > 0 then
    local marks = redis.call('HMGET', K.node_unavail(node_id), unpack_list(services))
    for i = 1, #services do
      if marks[i] and tonumber(marks[i]) > now then
        exclusion('unavailable:' .. services[i])
        return false
      end
    end
  end
  return true
end

-- The load text of a heartbeat record '<ms> <load> <inflight>' ('' when absent). Loads are
-- compared as text first: tonumber costs more than the rest of reading one.
local function beat_load(beat)
  if not beat then return '' end
  local a = string.find(beat, ' ', 1, true)
  local b = string.find(beat, ' ', a + 1, true)
  return string.sub(beat, a + 1, (b or 0) - 1)
end

-- The members of a pool tied for the most free slots that a selection weighs by load: at most
-- LOAD_WINDOW of them, and the 0-based place among them to start from (spread modulo the
-- length of the tie, so the start goes round the whole tie, not only its first members). nil
-- when the pool's top member has no free slot. Reads the top two; only for a tie, its length
-- (ZCOUNT) and, when longer than two, a window of it by rank: O(log N) each.
local LOAD_WINDOW = 4
local function tied_window(pkey, spread, cost)
  local top = redis.call('ZRANGE', pkey, '0', '1', 'REV', 'WITHSCORES')
  if #top == 0 or top[2] == '0' then return nil end -- free slots are integers >= 0
  if cost > 1 and tonumber(top[2]) < cost then return nil end
  if #top < 4 or top[4] ~= top[2] then return {top[1]}, 0 end
  local size = redis.call('ZCOUNT', pkey, top[2], top[2])
  local start = spread % size
  if size == 2 then return {top[1], top[3]}, start end
  local n = math.min(size, LOAD_WINDOW)
  local first = math.min(start, size - n)
  return redis.call('ZRANGE', pkey, int_s(first), int_s(first + n - 1), 'REV'), start - first
end

-- Pick a node for a job: the session's node if it still qualifies, else, in the first candidate
-- pool that has an eligible member, one of the members with the most free slots: the least
-- loaded of a window of up to 4 of them, ties (equal load) to the one nearest after the
-- window's starting place, which moves round the whole tie with spread (so equal nodes take
-- turns). When none of the window is eligible, the first eligible of the pool's 16 most-free
-- members. Looks at 20 members per pool at most, so the cost does not grow with pool size.
-- spread: an integer that changes from job to job (the job's order number).
-- cost: the slots the job takes (nil: 1); only a node with that many free slots qualifies.
-- principal: the job's, when a pool's fair reservation applies (fair_allow; submitting: the
-- principal submits it now); nil: none. The pool a node is found in is left in FAIR_FROM.
local function select_node(job_id, pools, services, session, now, fresh, spread, cost, principal,
    submitting)
  cost = cost or 1
  FAIR_FROM = nil
  if session and session ~= '' then
    local sticky = redis.call('GET', K.session(session))
    if sticky then
      for _, pool in ipairs(pools) do
        local free = redis.call('ZSCORE', K.pool(pool), sticky)
        if free and tonumber(free) >= cost then
          local rate_ok, lim = pool_rate_ok(pool, now, false)
          if rate_ok and eligible(sticky, job_id, services, now, fresh)
              and (not principal or fair_allow(pool, principal, cost, now, submitting)) then
            pool_rate_ok(pool, now, true, lim)
            FAIR_FROM = pool
            return sticky
          end
        end
      end
    end
  end
  for _, pool in ipairs(pools) do
    local pkey = K.pool(pool)
    local window, start = tied_window(pkey, spread, cost)
    local rate_ok, lim
    if window then rate_ok, lim = pool_rate_ok(pool, now, false) end
    if not window then
      exclusion('no_free_slot')
    elseif rate_ok and (not principal or fair_allow(pool, principal, cost, now, submitting)) then
      local n = #window
      local order = {}
      for j = 0, n - 1 do order[j + 1] = window[(start + j) % n + 1] end
      if n > 1 then -- least loaded first; a stable insertion sort keeps equal loads in turn
        local beats = redis.call('HMGET', K.beats(), unpack_list(order))
        local text, differ = {}, false
        for j = 1, n do
          text[j] = beat_load(beats[j])
          if text[j] ~= text[1] then differ = true end
        end
        if differ then
          local load = {}
          for j = 1, n do
            local node_id, l = order[j], tonumber(text[j]) or 0
            local k = j - 1
            while k >= 1 and load[k] > l do
              order[k + 1], load[k + 1] = order[k], load[k]
              k = k - 1
            end
            order[k + 1], load[k + 1] = node_id, l
          end
        end
      end
      local looked = {}
      for _, node_id in ipairs(order) do
        if eligible(node_id, job_id, services, now, fresh) then
          pool_rate_ok(pool, now, true, lim)
          FAIR_FROM = pool
          return node_id
        end
        looked[node_id] = true
      end
      local members = redis.call('ZRANGE', pkey, '+inf', int_s(cost), 'BYSCORE', 'REV', 'LIMIT',
        '0', SCAN_COUNT)
      for _, node_id in ipairs(members) do
        if not looked[node_id] and eligible(node_id, job_id, services, now, fresh) then
          pool_rate_ok(pool, now, true, lim)
          FAIR_FROM = pool
          return node_id
        end
      end
    end
  end
  return nil
end

-- Jobs -------------------------------------------------------------------------------------------

-- Browsing indices (zsets scored by the job's submit ms): K.jobs_of(principal) holds a
-- principal's retained jobs, K.jobs_in('active') the jobs not yet terminal and K.jobs_in(state)
-- those that ended in a terminal state (so every retained job is in exactly one jobs_in: all
-- jobs are their union, Queries.list_jobs), K.jobs_on(node) the jobs that had an attempt on
-- the node. They are written when a job is accepted (index_submit), when an attempt
-- is assigned (assign) and when the job ends (finish), never on other transitions; the job's
-- removal (index_forget, at gc) takes it out of every one, so they hold the retained jobs only.
-- A script that moves a terminal job back to a non-terminal state calls index_reopen.
local function index_submit(job_id, principal, t_sub_s)
  redis.call('ZADD', K.jobs_of(principal), t_sub_s, job_id)
  redis.call('ZADD', K.jobs_in('active'), t_sub_s, job_id)
end

-- The submit ms of a job as text (from the fields read, else from its hash).
local function job_t_sub(job_id, job)
  local t = job_field(job_id, job, 't_sub')
  if not t or t == '' then return '0' end
  return t
end

-- A terminal job goes back to a non-terminal state (its script writes the state): its jobs_in
-- entry moves from the state it had (job.state, as read) back to 'active'.
local function index_reopen(job_id, job)
  redis.call('ZREM', K.jobs_in(job.state), job_id)
  redis.call('ZADD', K.jobs_in('active'), job_t_sub(job_id, job), job_id)
end

-- job: its state, principal, node and attempt as stored. The attempts list and the tried set
-- still exist (the caller deletes them after): every node an earlier attempt ran on is in the
-- tried set, the last attempt's node is job.node. A job whose node field names the node of its
-- only attempt (attempt 1; or attempt 0: never assigned) had no attempt on another node, so its
-- tried set is not read (attempt is absent when the caller did not read it: then it is).
local function index_forget(job_id, job)
  if job.principal then redis.call('ZREM', K.jobs_of(job.principal), job_id) end
  redis.call('ZREM', K.jobs_in(TERMINAL[job.state] and job.state or 'active'), job_id)
  local node = job.node or ''
  if node ~= '' then redis.call('ZREM', K.jobs_on(node), job_id) end
  if job.attempt == '0' or (job.attempt == '1' and node ~= '') then return end
  for _, node_id in ipairs(redis.call('SMEMBERS', K.job_tried(job_id))) do
    if node_id ~= node then redis.call('ZREM', K.jobs_on(node_id), job_id) end
  end
end

-- Fair share ------------------------------------------------------------------------------------

-- Weighted fair share between principals, per pool (start-time fair queuing). A queued job is
-- in K.queue(pool) (every queued job of the pool, by priority then age) and in
-- K.fair_q(pool, principal) (the principal's, same order) of each of its candidate pools.
-- K.fair(pool) holds each principal with a job in its fair_q, scored by the virtual start of its
-- next dispatch; K.fair_vt(pool) the pool's virtual time V ('' field) and the finish F of the
-- last dispatch of each principal that has no job queued there. Invariants:
--  * a principal is in K.fair(pool) exactly when its K.fair_q(pool, principal) exists;
--  * a dispatch takes a principal of lowest start S (among the first FAIR_TENANTS), sets V = S
--    and moves the principal to F = S + cost / weight, or, with nothing left queued, records F;
--  * a principal that starts queueing again starts at max(V, its recorded F): an idle principal
--    banks no credit and one just served pays its debt;
--  * when no principal has a job queued for the pool, its K.fair_vt goes (the busy period ended:
--    every principal starts level).
-- Each step is O(log T) in the principals queued for the pool; a dispatch reads at most
-- FAIR_TENANTS principals and FAIR_HEADS queued jobs.
local FAIR_TENANTS = 4
local FAIR_HEADS = 16

-- A virtual time as text for ZADD/HSET: exact for a double.
local function vt_s(x)
  return string.format('%.17g', x)
end

local function fair_enqueue(pool, principal, job_id, order)
  local qkey = K.fair_q(pool, principal)
  redis.call('ZADD', qkey, order, job_id)
  local fkey = K.fair(pool)
  if not redis.call('ZSCORE', fkey, principal) then
    local vtkey = K.fair_vt(pool)
    local vt = redis.call('HMGET', vtkey, '', principal)
    local start = math.max(tonumber(vt[1]) or 0, tonumber(vt[2]) or 0)
    if vt[2] then redis.call('HDEL', vtkey, principal) end
    redis.call('ZADD', fkey, vt_s(start), principal)
  end
end

-- The job left the pool's queue without a dispatch from it (dispatched from another pool,
-- cancelled, timed out): it leaves its principal's queue too.
local function fair_dequeue(pool, principal, job_id)
  local qkey = K.fair_q(pool, principal)
  if redis.call('ZREM', qkey, job_id) == 1 and redis.call('EXISTS', qkey) == 0 then
    local fkey = K.fair(pool)
    redis.call('ZREM', fkey, principal)
    if redis.call('EXISTS', fkey) == 0 then redis.call('DEL', K.fair_vt(pool)) end
  end
end

-- A job of the principal was dispatched from the pool (after fair_dequeue took it out) at
-- virtual start S: charge cost / weight.
local function fair_charge(pool, principal, start, cost, weight)
  local finish = start + cost / weight
  local fkey = K.fair(pool)
  local vtkey = K.fair_vt(pool)
  if redis.call('EXISTS', K.fair_q(pool, principal)) == 1 then
    redis.call('ZADD', fkey, vt_s(finish), principal)
    redis.call('HSET', vtkey, '', vt_s(start))
  elseif redis.call('EXISTS', fkey) == 1 then
    redis.call('HSET', vtkey, '', vt_s(start), principal, vt_s(finish))
  end
end

-- The slots a job takes (its 'cost' field, absent for 1).
local function job_cost(job_id, job)
  return tonumber(job_field(job_id, job, 'cost')) or 1
end

-- The slots a node's job set takes: each job's cost (O(jobs on the node), at most its capacity
-- when the accounting holds).
local function held_cost(node_id)
  local total = 0
  for _, job_id in ipairs(redis.call('SMEMBERS', K.node_jobs(node_id))) do
    total = total + (tonumber(redis.call('HGET', K.job(job_id), 'cost')) or 1)
  end
  return total
end

local function job_services(job)
  if not job.services or job.services == '' then return {} end
  return cjson.decode(job.services)
end

-- The job leaves every queue; a pool whose last queued job it was and that has no member leaves
-- the index.
local function dequeue_everywhere(job_id, job)
  local principal = job.principal or redis.call('HGET', K.job(job_id), 'principal') or ''
  for _, pool in ipairs(cjson.decode(job.pools)) do
    if redis.call('ZREM', K.queue(pool), job_id) == 1 then
      fair_dequeue(pool, principal, job_id)
      if redis.call('EXISTS', K.queue(pool)) == 0 then pool_drop_if_empty(pool) end
    end
  end
end

-- Record attempt n+1 of job on node and deliver the assignment to the node's owner.
-- fields: optional flat {field, value, ...} list written to the job hash in the same HSET.
-- now_s: now as text when the caller has it already.
local function assign(job_id, job, node_id, now, fields, now_s)
  local attempt = tonumber(job.attempt) + 1
  local attempt_s = int_s(attempt)
  local deadline_s = int_s(now + tonumber(job.ack_ms))
  local nkey = K.node(node_id)
  local vals = redis.call('HMGET', nkey, 'owner', 'epoch', 'state', 'capacity', 'pools')
  local owner, epoch = vals[1], vals[2]
  local cost = job_cost(job_id, job)
  node_slots(node_id, cost, {vals[3], vals[4], vals[5]})
  fair_took(job_id, job, cost)
  redis.call('SADD', K.node_jobs(node_id), job_id)
  local flat = fields or {}
  local n = #flat
  flat[n + 1], flat[n + 2], flat[n + 3], flat[n + 4] = 'attempt', attempt_s, 'node', node_id
  flat[n + 5], flat[n + 6], flat[n + 7], flat[n + 8] = 't_asg', now_s or int_s(now), 'state',
    'assigned'
  if attempt > 1 then -- an earlier attempt's acceptance time goes
    flat[n + 9], flat[n + 10] = 't_acc', ''
  end
  redis.call('HSET', K.job(job_id), unpack_list(flat))
  redis.call('ZADD', K.jobs_on(node_id), job_t_sub(job_id, job), job_id)
  count_state(job_id, job.state, 'assigned', attempt, node_id, job)
  redis.call('ZADD', K.deadlines(), deadline_s, job_id)
  if job.session and job.session ~= '' then
    redis.call('SET', K.session(job.session), node_id, 'PX', job.session_ms)
  end
  -- {'assign', node, job, attempt, payload, session, deadline, epoch, trace, attachments},
  -- built as text (see count_state); epoch is the integer the node record holds; attachments
  -- is the JSON of the submit's attachment list, '' for none (their bytes stay in job_blobs)
  local att = job_field(job_id, job, 'att') or ''
  deliver(owner, '["assign",' .. cjson.encode(node_id) .. ',' .. cjson.encode(job_id) .. ','
    .. attempt_s .. ',' .. cjson.encode(job.payload) .. ',' .. cjson.encode(job.session or '')
    .. ',' .. deadline_s .. ',' .. (tonumber(epoch) and epoch or 'null') .. ','
    .. cjson.encode(job.trace or '') .. ',' .. cjson.encode(att) .. ']')
  job.attempt = attempt_s
  job.node = node_id
  job.state = 'assigned'
end

-- fields: optional flat {field, value, ...} list written to the job hash in the same HSET.
local function enqueue(job_id, job, now, fields)
  local seq = tonumber(job.seq)
  local order = -tonumber(job.priority) * 1e12 + seq
  local principal = job.principal or ''
  for _, pool in ipairs(cjson.decode(job.pools)) do
    redis.call('ZADD', K.queue(pool), order, job_id)
    fair_enqueue(pool, principal, job_id, order)
    if redis.call('ZADD', K.pools(), 'NX', '0', pool) == 1 and job.principal then
      redis.call('HSET', K.pool_creator(), pool, job.principal)
      redis.call('HINCRBY', K.pools_created(), job.principal, '1')
    end
  end
  local flat = fields or {}
  local n = #flat
  flat[n + 1], flat[n + 2], flat[n + 3], flat[n + 4] = 'node', '', 't_enq', int_s(now)
  if job.state ~= 'queued' then
    flat[n + 5], flat[n + 6] = 'state', 'queued'
  end
  redis.call('HSET', K.job(job_id), unpack_list(flat))
  count_state(job_id, job.state, 'queued', job.attempt, '', job)
  redis.call('ZADD', K.deadlines(), now + tonumber(job.queue_ms), job_id)
  job.state = 'queued'
end

-- The done message as JSON text: {'done', job, state, ok, output, error, node, attempt, t_sub,
-- t_asg, t_acc, t_fin, principal, trace, attachments[, session, seq]} (the last two for a job of
-- an ordered session: job.session and job.oseq read); output, error and attachments (the
-- result's attachment list, '' for none) are JSON texts carried as strings.
-- The principal owning the job goes with it: an instance hands it only to a connection of that
-- principal (job.principal must be among the fields read, and job.trace for the trace).
local function done_message(job_id, job)
  local att = job_field(job_id, job, 'out_att') or ''
  return '["done",' .. cjson.encode(job_id) .. ',"' .. job.state .. '",' .. num_s(job.ok) .. ','
    .. cjson.encode(job.output or 'null') .. ',' .. cjson.encode(job.error or 'null') .. ','
    .. cjson.encode(job.node or '') .. ',' .. num_s(job.attempt) .. ',' .. num_s(job.t_sub) .. ','
    .. num_s(job.t_asg) .. ',' .. num_s(job.t_acc) .. ',' .. num_s(job.t_fin) .. ','
    .. cjson.encode(job.principal or '') .. ',' .. cjson.encode(job.trace or '') .. ','
    .. cjson.encode(att)
    .. ((job.oseq and job.oseq ~= '') and (',' .. cjson.encode(job.session) .. ',' .. job.oseq)
      or '') .. ']'
end

-- A job's deliveries move to the caller's instance (follow, duplicate submit): count the move
-- in the job's 'follows' field and tell the instance that had them, if another, that the
-- principal's connection there no longer follows the job ({'detach', job, principal, follows}).
-- Returns the count, which orders the moves of one job.
local function move_client(job_id, jkey, job)
  local follows = redis.call('HINCRBY', jkey, 'follows', '1')
  redis.call('HSET', jkey, 'client', CALLER)
  if job.client and job.client ~= '' and job.client ~= CALLER then
    deliver(job.client, '["detach",' .. cjson.encode(job_id) .. ',' .. cjson.encode(job.principal)
      .. ',' .. int_s(follows) .. ']')
  end
  return follows
end

-- Lifecycle: delays, backoff, bounded retention ------------------------------------------------

-- Finished jobs one call evicts at most over a principal's retention bounds: a finish does
-- bounded work, and bounds lowered by a reload are met over the following finishes.
local EVICT_MAX = 8

-- A job waits until due_ms in state 'delayed': no node, no slot, no deadline, in K.delayed(),
-- from which the reaper's release_due queues or places it. fields: optional flat
-- {field, value, ...} list written to the job hash in the same HSET.
local function delay_job(job_id, job, due_ms, fields)
  local flat = fields or {}
  local n = #flat
  flat[n + 1], flat[n + 2], flat[n + 3], flat[n + 4] = 'node', '', 't_due', int_s(due_ms)
  flat[n + 5], flat[n + 6] = 'state', 'delayed'
  redis.call('HSET', K.job(job_id), unpack_list(flat))
  redis.call('ZREM', K.deadlines(), job_id)
  count_state(job_id, job.state, 'delayed', job.attempt, '', job)
  redis.call('ZADD', K.delayed(), int_s(due_ms), job_id)
  job.state = 'delayed'
  job.node = ''
end

-- The wait after attempt n failed retryably: b = min(cap, base * 2^(n-1)), of which half is
-- fixed and half scaled by draw, the caller's random number in [0, 1) ("equal jitter": the
-- wait grows with n whatever the draw). job.backoff is '<base ms> <cap ms>' (written at submit).
local function backoff_ms(job, draw)
  local base, cap = 1000, 60000
  local b, c = string.match(job.backoff or '', '^(%d+) (%d+)$')
  if b then base, cap = tonumber(b), tonumber(c) end
  local n = tonumber(job.attempt) or 1
  local full = math.min(cap, base * 2 ^ (math.min(n, 64) - 1))
  return math.floor(full / 2 + full / 2 * draw)
end

-- The finished job leaves its principal's retention accounting (job: principal, rbytes).
local function retained_forget(job_id, job)
  local principal = job.principal
  if not principal then return end
  if redis.call('ZREM', K.ended_of(principal), job_id) == 1 then
    if redis.call('EXISTS', K.ended_of(principal)) == 0 then
      redis.call('HDEL', K.retained(), principal)
    else
      redis.call('HINCRBY', K.retained(), principal, int_s(-(tonumber(job.rbytes) or 0)))
    end
  end
end

-- Remove a finished job and everything that names it (job: DROP_FIELDS read). Its state's
-- count is its K.jobs_in(state) entry, which index_forget removes.
local DROP_FIELDS = {'state', 'principal', 'node', 'rbytes', 'attempt'}
local function drop_finished(job_id, job)
  index_forget(job_id, job)
  retained_forget(job_id, job)
  redis.call('ZREM', K.gc(), 'j:' .. job_id)
  redis.call('DEL', K.job(job_id), K.job_tried(job_id), K.job_attempts(job_id),
    K.job_blobs(job_id))
end

-- What finish reads of a job for counting (principal, pbytes), retention (keep, rlim, att,
-- att_bytes, seq), the done (out_att) and the indices (t_sub); need() reads the missing ones at
-- once.
local FINISH_FIELDS = {'principal', 'pbytes', 'keep', 'rlim', 'att', 'att_bytes', 'out_att',
  't_sub', 'seq'}

-- The length of a job's field: from the table when it holds it (the value just written, or as
-- read), 0 when the read covered it and the hash lacks it, else HSTRLEN.
local function field_len(job_id, job, name)
  local v = job[name]
  if v ~= nil then return #v end
  if covered(job, name) then return 0 end
  return redis.call('HSTRLEN', K.job(job_id), name)
end

-- A job finishing in `state` (job: FINISH_FIELDS read, fields just written set): its payload
-- goes unless kept ('keep' = '1' at submit, or the job did not end done, so that an operator
-- may requeue it), and the bytes it keeps are returned for its 'rbytes' (output, error,
-- attachments, a kept payload).
local function retained_bytes(job_id, job, state)
  local jkey = K.job(job_id)
  local bytes = field_len(job_id, job, 'output') + field_len(job_id, job, 'error')
    + (tonumber(job.att_bytes) or 0)
  if job.keep == '1' or state ~= 'done' then
    return bytes + redis.call('HSTRLEN', jkey, 'payload')
  end
  redis.call('HDEL', jkey, 'payload')
  job.payload = nil
  -- the input attachments go with the payload (audio in is not kept once the job is done)
  if not job.att or job.att == '' then return bytes end
  local ok, specs = pcall(cjson.decode, job.att)
  if ok and type(specs) == 'table' then
    for _, spec in ipairs(specs) do
      if redis.call('HDEL', K.job_blobs(job_id), 'in:' .. spec.name) == 1 then
        bytes = bytes - (tonumber(spec.size) or 0)
      end
    end
  end
  return bytes
end

-- A job just finished holding `bytes` ('rbytes'): its principal's retained finished jobs are
-- brought back within 'rlim' ('<count> <bytes>', written at submit) by evicting the oldest of
-- that principal only. job: principal, rlim and seq read; t_fin set.
local function retain(job_id, job, bytes)
  local principal = job.principal
  local max_n, max_b = string.match(job.rlim or '', '^(%d+) (%d+)$')
  if not principal or not max_n then return end
  max_n, max_b = tonumber(max_n), tonumber(max_b)
  local okey = K.ended_of(principal)
  -- finish order: the finish ms, then (within one ms) the submit order, as t_fin·1000 +
  -- seq mod 1000 (below 2^53: exact in a double)
  redis.call('ZADD', okey, int_s(tonumber(job.t_fin) * 1000 + (tonumber(job.seq) or 0) % 1000),
    job_id)
  local total = redis.call('HINCRBY', K.retained(), principal, int_s(bytes))
  local count = redis.call('ZCARD', okey)
  local evicted = 0
  while evicted < EVICT_MAX and count > 1 and (count > max_n or total > max_b) do
    local oldest = redis.call('ZRANGE', okey, '0', '0')[1]
    if oldest == job_id then break end
    local old = hmget(K.job(oldest), DROP_FIELDS)
    if old and TERMINAL[old.state] then
      drop_finished(oldest, old)
    else
      redis.call('ZREM', okey, oldest)
    end
    total = tonumber(redis.call('HGET', K.retained(), principal) or '0')
    count = count - 1
    evicted = evicted + 1
  end
end

-- A stage job's end, handed to its pipeline (defined in stages.lua).
local stage_ended

-- Ordered sessions ------------------------------------------------------------------------------
-- A job submitted with a session and a seq belongs to the ordered session of its principal,
-- id '<principal>\31<session>' (ids hold no control character; sessions are named per
-- principal). Rules:
--  * its done goes to the session's client instance (K.order() 'client') in seq order: a result
--    waits in K.order_held() until 'next' (the lowest seq neither delivered nor skipped) reaches
--    it, then it and every consecutive waiting one are delivered and 'next' moves past them;
--  * they go through the instance's inbox stream, the caller's too (never the reply's fast
--    path, which could overtake an inbox entry of an earlier script): one stream, one order;
--  * results are delivered only to an instance whose presence has not expired (or the caller):
--    with none, they wait for a session follow, so an instance that is gone loses nothing held;
--  * while results wait for a missing seq, K.order_gaps() holds the session at the time (gap_ms
--    after 'next' last moved, or after the first result waited) at which the reaper reports the
--    missing seqs skipped: one skipped message for the range, waiting in seq order like a result;
--  * a result for a seq already reported skipped is not sent on the session (it stays readable
--    through status and follow of its job).

local function order_id(principal, session)
  return principal .. '\31' .. session
end

local function order_live(instance, now)
  if not instance or instance == '' then return false end
  if instance == CALLER then return true end
  local exp = redis.call('ZSCORE', K.instances(), instance)
  return exp and tonumber(exp) > now or false
end

-- Deliver the session's waiting results from 'next' on while they are consecutive and its client
-- is live; arm (or keep) the gap timer when a missing seq holds the rest.
local function order_release(oid, now)
  local okey, hkey = K.order(oid), K.order_held(oid)
  local o = redis.call('HMGET', okey, 'next', 'client', 'gap_ms')
  if not o[1] then
    redis.call('ZREM', K.order_gaps(), oid)
    return
  end
  local nxt = tonumber(o[1])
  local live = order_live(o[2], now)
  local moved = false
  while true do
    local head = redis.call('ZRANGE', hkey, '0', '0', 'WITHSCORES')
    if #head == 0 then
      redis.call('ZREM', K.order_gaps(), oid)
      break
    end
    local seq = tonumber(head[2])
    if seq > nxt then
      if moved then
        redis.call('ZADD', K.order_gaps(), int_s(now + tonumber(o[3])), oid)
      else
        redis.call('ZADD', K.order_gaps(), 'NX', int_s(now + tonumber(o[3])), oid)
      end
      break
    end
    if seq == nxt and not live then
      redis.call('ZREM', K.order_gaps(), oid)
      break
    end
    redis.call('ZREM', hkey, head[1])
    if seq == nxt then
      local a = string.find(head[1], ' ', 1, true)
      local b = string.find(head[1], ' ', a + 1, true)
      -- always through the inbox, the caller's own too: one stream keeps the session's order
      -- (a reply's fast path could overtake an earlier script's inbox entry)
      redis.call('XADD', K.inbox(o[2]), '*', 'd', string.sub(head[1], b + 1))
      nxt = tonumber(string.sub(head[1], a + 1, b - 1))
      moved = true
    end
  end
  if moved then redis.call('HSET', okey, 'next', int_s(nxt)) end
end

-- The session's results now go to the caller's instance. What the instance that had them has
-- not taken from its inbox yet (it died, or has not read it) moves to the caller's inbox, in
-- order, ahead of what the session releases next: an instance killed with results in its inbox
-- loses none of them. Looks at the first ORDER_RECLAIM entries of that inbox.
local ORDER_RECLAIM = '10000'
local function order_move(oid, principal, session)
  local okey = K.order(oid)
  local before = redis.call('HGET', okey, 'client') or ''
  redis.call('HSET', okey, 'client', CALLER)
  if before == '' or before == CALLER then return before end
  local old = K.inbox(before)
  local mark = cjson.encode(session)
  for _, entry in ipairs(redis.call('XRANGE', old, '-', '+', 'COUNT', ORDER_RECLAIM)) do
    local d = entry[2][2]
    if string.find(d, mark, 1, true) then
      local ok, m = pcall(cjson.decode, d)
      if ok and ((m[1] == 'done' and m[13] == principal and m[16] == session)
          or (m[1] == 'skipped' and m[2] == principal and m[3] == session)) then
        redis.call('XADD', K.inbox(CALLER), '*', 'd', d)
        redis.call('XDEL', old, entry[1])
      end
    end
  end
  return before
end

-- The order keys of a session live retain_ms past their last use.
local function order_touch(oid, retain_ms)
  for _, key in ipairs({K.order(oid), K.order_held(oid), K.order_seqs(oid)}) do
    redis.call('PEXPIRE', key, retain_ms)
  end
end

-- A job of an ordered session ended: its done (msg) waits for its turn. Returns false when the
-- session's state is gone (its retention ended): the caller delivers it as any job's.
local function order_done(job, msg, now)
  local oid = order_id(job.principal, job.session)
  local nxt = redis.call('HGET', K.order(oid), 'next')
  if not nxt then return false end
  if tonumber(job.oseq) < tonumber(nxt) then return true end
  local hkey = K.order_held(oid)
  redis.call('ZADD', hkey, job.oseq, job.oseq .. ' ' .. int_s(tonumber(job.oseq) + 1) .. ' ' .. msg)
  local ttl = redis.call('PTTL', K.order(oid))
  if ttl > 0 then redis.call('PEXPIRE', hkey, int_s(ttl)) end
  order_release(oid, now)
  return true
end

-- The session's missing seqs before its first waiting result are reported skipped.
local function order_skip(oid, now)
  local nxt = redis.call('HGET', K.order(oid), 'next')
  local head = redis.call('ZRANGE', K.order_held(oid), '0', '0', 'WITHSCORES')
  if nxt and #head > 0 and tonumber(head[2]) > tonumber(nxt) then
    local sep = string.find(oid, '\31', 1, true)
    local msg = '["skipped",' .. cjson.encode(string.sub(oid, 1, sep - 1)) .. ','
      .. cjson.encode(string.sub(oid, sep + 1)) .. ',' .. nxt .. ',' .. int_s(tonumber(head[2]) - 1)
      .. ']'
    redis.call('ZADD', K.order_held(oid), nxt, nxt .. ' ' .. head[2] .. ' ' .. msg)
  end
  redis.call('ZREM', K.order_gaps(), oid)
  order_release(oid, now)
end

-- Move a job to a terminal state: it leaves every queue and index, is retained for its
-- retention time, and its client's instance gets exactly one done (a stage of a pipeline:
-- its pipeline's stage_ended instead, in the same script).
-- job: the job's fields as read (the state, node, attempt, client, retain_ms, t_sub, t_asg and
-- t_acc at least; pools if it is queued; principal, session and oseq for an ordered session);
-- what else it needs is read in one HMGET (FINISH_FIELDS, those not read yet).
-- fields: what the end writes; with out_att (a result's attachments), att_bytes, to which the
-- caller added their size, is read again.
local function finish(job_id, job, state, fields, now)
  local jkey = K.job(job_id)
  if job.state == 'queued' then dequeue_everywhere(job_id, job) end
  if job.state == 'delayed' then redis.call('ZREM', K.delayed(), job_id) end
  redis.call('ZREM', K.deadlines(), job_id)
  local now_s = int_s(now)
  local flat = {'t_fin', now_s, 'state', state}
  for k, v in pairs(fields) do
    if type(v) == 'number' then v = int_s(v) end
    flat[#flat + 1] = k
    flat[#flat + 1] = v
    job[k] = v
  end
  -- a result's attachments (fields.out_att) were added to att_bytes after it may have been read
  if fields.out_att and covered(job, 'att_bytes') then
    job.att_bytes = nil
    if job[0] == true then job[0] = {} else read_set(job).att_bytes = nil end
  end
  -- what counting, retention and the done read of the job, in one HMGET of what is missing
  need(job_id, job, FINISH_FIELDS)
  local rbytes = retained_bytes(job_id, job, state)
  flat[#flat + 1], flat[#flat + 2] = 'rbytes', int_s(rbytes)
  redis.call('HSET', jkey, unpack_list(flat))
  -- the event names the node the attempt ran on, also when the caller cleared job.node
  local node = job.node
  if not node or node == '' then node = redis.call('HGET', jkey, 'node') end
  count_state(job_id, job.state, state, job.attempt, node, job)
  local t_sub = job_t_sub(job_id, job)
  redis.call('ZREM', K.jobs_in('active'), job_id)
  redis.call('ZADD', K.jobs_in(state), t_sub, job_id)
  job.t_fin = now_s
  job.state = state
  redis.call('ZADD', K.gc(), int_s(now + tonumber(job.retain_ms)), 'j:' .. job_id)
  retain(job_id, job, rbytes)
  -- a bounded window of recent completions: latency percentiles and rates for every instance
  local kept = redis.call('LPUSH', K.finished(), '[' .. cjson.encode(job_id) .. ',"' .. state
    .. '",' .. cjson.encode(job.node or '') .. ',' .. num_s(job.t_sub) .. ',' .. num_s(job.t_asg)
    .. ',' .. num_s(job.t_acc) .. ',' .. now_s .. ']')
  if kept > FINISHED_KEPT + FINISHED_SLACK then
    redis.call('LTRIM', K.finished(), 0, FINISHED_KEPT - 1)
  end
  local msg = done_message(job_id, job)
  if not job.pipe or job.pipe == '' then
    if not (job.oseq and job.oseq ~= '' and order_done(job, msg, now)) then
      deliver(job.client, msg)
    end
  else -- a stage: a client that follows the stage's own job id still gets its done
    if job.client and job.client ~= '' then deliver(job.client, msg) end
    stage_ended(job_id, job, state, now)
  end
end

local RELEASE_FIELDS = {'cost', 'principal', 'fpool', 'pbytes', 'keep', 'rlim', 'att',
  'att_bytes', 'out_att', 't_sub', 'seq'}

-- Free the slot a job holds on its node (if any). Returns the node, and when a slot was freed
-- the node's {state, capacity, used, pools} as they now are.
local function release(job_id, job)
  local node_id = job.node
  if node_id and node_id ~= '' then
    if redis.call('SREM', K.node_jobs(node_id), job_id) == 1 then
      -- the cost, and with it what the job's end reads next (finish, or a retry's assign or
      -- enqueue), in one read
      need(job_id, job, RELEASE_FIELDS)
      local used, vals = node_slots(node_id, -fair_release(job_id, job))
      return node_id, {vals[1], vals[2], used, vals[3]}
    end
    fair_release(job_id, job) -- a job set that lost the entry: its pool's use still goes
  end
  return node_id, nil
end

-- The job a node with `free` of `capacity` slots takes next from one pool by fair share: of the
-- pool's first FAIR_TENANTS principals in fair order, the first whose queue has, among its first
-- heads (FAIR_HEADS shared among them), a job the node may run. When that job costs more than
-- the free slots but no more than the capacity, the pool holds the node's free slots for it
-- (returns nil): smaller jobs do not pass it, so a weighted job is not starved by slots freed
-- one at a time. Returns job id, order, principal, virtual start, or nil.
local function fair_pick(pool, node_id, free, capacity, now)
  local fkey = K.fair(pool)
  local tenants = redis.call('ZRANGE', fkey, '0', int_s(FAIR_TENANTS - 1), 'WITHSCORES')
  if #tenants == 0 then
    -- jobs queued by a version without fair queues (none otherwise: a pool's queue and its fair
    -- queues hold the same jobs) move into them, 16 at a time
    local old = redis.call('ZRANGE', K.queue(pool), '0', SCAN_LAST, 'WITHSCORES')
    if #old == 0 then return nil end
    for i = 1, #old, 2 do
      fair_enqueue(pool, redis.call('HGET', K.job(old[i]), 'principal') or '', old[i], old[i + 1])
    end
    tenants = redis.call('ZRANGE', fkey, '0', int_s(FAIR_TENANTS - 1), 'WITHSCORES')
  end
  local heads_each = int_s(math.floor(FAIR_HEADS / (#tenants / 2)) - 1)
  for i = 1, #tenants, 2 do
    local principal = tenants[i]
    local heads = {}
    -- a principal at its in-flight cap (quotas) is passed over, not waited for
    if principal_can_run(principal, 1) then
      heads = redis.call('ZRANGE', K.fair_q(pool, principal), '0', heads_each, 'WITHSCORES')
      if #heads == 0 then redis.call('ZREM', fkey, principal) end -- stale entry, skipped once
    end
    for j = 1, #heads, 2 do
      local job_id = heads[j]
      local f = redis.call('HMGET', K.job(job_id), 'services', 'cost')
      local cost = tonumber(f[2]) or 1
      if cost <= capacity then
        local svc = (f[1] and f[1] ~= '') and cjson.decode(f[1]) or {}
        if eligible(node_id, job_id, svc, now) then
          -- a principal the pool's reservation holds back is passed over (fair_allow)
          if not fair_allow(pool, principal, cost, now) then break end
          if cost > free then return nil end
          return job_id, tonumber(heads[j + 1]), principal, tonumber(tenants[i + 1])
        end
      end
    end
  end
  return nil
end

-- Hand a node queued jobs of its pools while it has free slots (work conservation). Within a
-- pool the weighted fair share between principals picks (fair_pick); between the node's pools,
-- the picked job of highest priority, then oldest.
-- known: the node's {state, capacity, used, pools} when the caller has just read them.
local function feed_node(node_id, now, known)
  local vals = known or redis.call('HMGET', K.node(node_id), 'state', 'capacity', 'used', 'pools')
  if vals[1] ~= 'online' then return end
  local capacity = tonumber(vals[2])
  local free = capacity - tonumber(vals[3])
  if free <= 0 then return end
  local pools = (vals[4] and vals[4] ~= '') and cjson.decode(vals[4]) or {}
  local exp = redis.call('ZSCORE', K.alive(), node_id)
  if not exp or tonumber(exp) <= now then return end
  while free > 0 do
    local best_id, best_order, best_pool, best_principal, best_start
    local lims = {}
    for _, pool in ipairs(pools) do
      local job_id, order, principal, start, rate_ok
      rate_ok, lims[pool] = pool_rate_ok(pool, now, false)
      if rate_ok then -- a pool over its dispatch rate waits its refill
        job_id, order, principal, start = fair_pick(pool, node_id, free, capacity, now)
      end
      if job_id and (not best_order or order < best_order) then
        best_id, best_order, best_pool, best_principal, best_start = job_id, order, pool,
          principal, start
      end
    end
    if not best_id then return end
    pool_rate_ok(best_pool, now, true, lims[best_pool])
    local job = hgetall(K.job(best_id))
    local cost = tonumber(job.cost) or 1
    dequeue_everywhere(best_id, job)
    fair_charge(best_pool, best_principal, best_start, cost, tonumber(job.fw) or 1)
    FAIR_FROM = best_pool
    assign(best_id, job, node_id, now)
    free = free - cost
  end
end

-- Pools whose fair reservation held free slots and whose earliest holder's activity lapsed
-- by now (K.fair_held()), at most batch: their members with the most free slots (16 at most)
-- take queued work; a reservation that still holds enters the pool again (fair_allow).
local function fair_lapsed(now, batch)
  local held = redis.call('ZRANGE', K.fair_held(), '-inf', int_s(now), 'BYSCORE', 'LIMIT', '0',
    batch)
  for _, pool in ipairs(held) do
    redis.call('ZREM', K.fair_held(), pool)
    local members = redis.call('ZRANGE', K.pool(pool), '+inf', '1', 'BYSCORE', 'REV', 'LIMIT',
      '0', SCAN_COUNT)
    for _, node_id in ipairs(members) do feed_node(node_id, now) end
  end
end

-- A job's attempt ended without a result (node lost, rejected, deadline missed): exclude that
-- node, then retry on another node at once, queue it, or fail it at max_attempts.
-- kind: why the attempt ended, for its history: 'rejected', 'timed_out' (ack or run deadline),
-- nil for 'lost' (the node went away, or does not run the job).
local function retry(job_id, job, reason, now, kind)
  local node_id = release(job_id, job)
  if node_id and node_id ~= '' then
    redis.call('SADD', K.job_tried(job_id), node_id)
  end
  -- its history: [attempt, node, kind, reason, t_asg, t_acc, t_end] (a job's attempts that
  -- ended with a result are read from its hash instead)
  redis.call('RPUSH', K.job_attempts(job_id), '[' .. num_s(job.attempt) .. ','
    .. cjson.encode(node_id or '') .. ',"' .. (kind or 'lost') .. '",' .. cjson.encode(reason)
    .. ',' .. num_s(job.t_asg) .. ',' .. num_s(job.t_acc) .. ',' .. int_s(now) .. ']')
  redis.call('HSET', K.job(job_id), 'reason', reason)
  if tonumber(job.attempt) >= tonumber(job.max_attempts) then
    finish(job_id, job, 'failed', {ok = 0, error = cjson.encode({code = 'E_ATTEMPTS',
      message = reason .. ' (attempt ' .. job.attempt .. ' of ' .. job.max_attempts .. ')'})}, now)
    return node_id
  end
  -- the job still counts as in flight here: it may go on if its principal is within its cap
  local target = principal_can_run(job.principal, 0) and select_node(job_id,
    cjson.decode(job.pools), job_services(job), '', now, false,
    (tonumber(job.seq) or 0) + (tonumber(job.attempt) or 0), job_cost(job_id, job),
    job.principal or '')
  if target then
    assign(job_id, job, target, now)
  else
    enqueue(job_id, job, now)
  end
  return node_id
end

-- The node's result said the failure is retryable and attempts remain: the node is excluded
-- and the job waits its backoff (backoff_ms with the caller's draw) as a delayed job. The slot
-- is already released. Returns the unix ms at which it is due.
local function retry_later(job_id, job, node_id, reason, now, draw)
  redis.call('SADD', K.job_tried(job_id), node_id)
  redis.call('RPUSH', K.job_attempts(job_id), '[' .. num_s(job.attempt) .. ','
    .. cjson.encode(node_id) .. ',"failed",' .. cjson.encode(reason) .. ',' .. num_s(job.t_asg)
    .. ',' .. num_s(job.t_acc) .. ',' .. int_s(now) .. ']')
  local due = now + backoff_ms(job, draw)
  delay_job(job_id, job, due, {'reason', reason})
  return due
end

-- Delayed jobs now due, at most batch of them, are placed on a free slot or queued (their queue
-- timeout counts from here). A job's first attempt keeps its session; a retry avoids the nodes
-- that failed it. Returns how many entries were handled.
local function release_due(now, batch)
  local due = redis.call('ZRANGE', K.delayed(), '-inf', int_s(now), 'BYSCORE', 'LIMIT', '0', batch)
  for _, job_id in ipairs(due) do
    redis.call('ZREM', K.delayed(), job_id)
    local job = hgetall(K.job(job_id))
    if job and job.state == 'delayed' then
      local first = job.attempt == '0'
      local target = principal_can_run(job.principal, 1) and select_node(job_id,
        cjson.decode(job.pools), job_services(job), first and (job.session or '') or '', now, first,
        (tonumber(job.seq) or 0) + (tonumber(job.attempt) or 0), job_cost(job_id, job),
        job.principal or '')
      if target then assign(job_id, job, target, now) else enqueue(job_id, job, now) end
    end
  end
  return #due
end

-- Take a node out of service: leave pools and liveness, retry every job it held.
local function node_down(node_id, node, reason, now, retain_ms)
  for _, pool in ipairs(node_pools(node)) do pool_leave(pool, node_id) end
  redis.call('ZREM', K.alive(), node_id)
  redis.call('HDEL', K.fence(), node_id) -- its heartbeats are stale from now on
  redis.call('DEL', K.node_unavail(node_id))
  redis.call('ZREM', K.unavail_due(), node_id)
  if node.owner and node.owner ~= '' then redis.call('SREM', K.owned(node.owner), node_id) end
  redis.call('HSET', K.node(node_id), 'state', 'offline', 'used', '0', 'reason', reason,
    't_off', now)
  local jobs = redis.call('SMEMBERS', K.node_jobs(node_id))
  redis.call('DEL', K.node_jobs(node_id))
  for _, job_id in ipairs(jobs) do
    local job = hgetall(K.job(job_id))
    if job and (job.state == 'assigned' or job.state == 'running') and job.node == node_id then
      fair_release(job_id, job)
      job.node = '' -- its slot is already gone with the node
      redis.call('SADD', K.job_tried(job_id), node_id)
      retry(job_id, job, reason .. ' on node ' .. node_id, now)
    end
  end
  redis.call('ZADD', K.gc(), now + retain_ms, 'n:' .. node_id)
  EVENTS[#EVENTS + 1] = cjson.encode({'node_offline', node_id, reason})
  return #jobs
end

-- Fence a node-side message: the job (as read, nil if absent) exists, is not terminal and is
-- attempt n on this node. Returns the job and nil, or the job and an error reply.
local function fence(job_id, node_id, attempt, job)
  if not job then return nil, err('E_NO_JOB', 'job ' .. job_id .. ' does not exist') end
  if job.node ~= node_id or job.attempt ~= attempt or TERMINAL[job.state] then
    -- The text names no other node: the job's holder is not this node's business.
    local current = job.node == node_id and ('attempt ' .. job.attempt .. ', state ' .. job.state)
      or 'the job is not on this node'
    return job, err('E_STALE_ATTEMPT', 'job ' .. job_id .. ' attempt ' .. attempt ..
      ' on node ' .. node_id .. ' is not current (' .. current .. '): drop that attempt')
  end
  return job, nil
end

-- Give job from_id's output attachments (its result's: out_att, 'out:<name>' in its blobs; with
-- side 'in', its input: att, 'in:<name>') to job to_id as its input (att, 'in:<name>', counted in
-- its att_bytes), for a job whose input is another's output (a stage after the one that produced
-- it; a pipeline's first stage, side 'in'). Call it before to_id is assigned, or set job.att to
-- what it returns: assign carries job.att (or the hash's att when the caller did not read it).
-- move: the bytes leave from_id (its list and att_bytes follow), else they are copied. Returns
-- the attachment list as JSON, '' when from_id has none (or lost them).
local function pass_attachments(from_id, to_id, move, side)
  local field, prefix = 'out_att', 'out:'
  if side == 'in' then field, prefix = 'att', 'in:' end
  local att = redis.call('HGET', K.job(from_id), field)
  if not att or att == '' then return '' end
  local specs = cjson.decode(att)
  local names, flat, size = {}, {}, 0
  for i, spec in ipairs(specs) do names[i] = prefix .. spec.name end
  local data = redis.call('HMGET', K.job_blobs(from_id), unpack_list(names))
  for i, spec in ipairs(specs) do
    if not data[i] then return '' end
    flat[2 * i - 1], flat[2 * i] = 'in:' .. spec.name, data[i]
    size = size + #data[i]
  end
  redis.call('HSET', K.job_blobs(to_id), unpack_list(flat))
  redis.call('HSET', K.job(to_id), 'att', att)
  redis.call('HINCRBY', K.job(to_id), 'att_bytes', size)
  if move then
    redis.call('HDEL', K.job_blobs(from_id), unpack_list(names))
    redis.call('HDEL', K.job(from_id), field)
    redis.call('HINCRBY', K.job(from_id), 'att_bytes', -size)
  end
  return att
end

-- Read the job and fence: fields, the fields the caller needs (state, node and attempt among
-- them), or nil for all of them.
local function fenced_job(job_id, node_id, attempt, fields)
  local job
  if fields then job = hmget(K.job(job_id), fields) else job = hgetall(K.job(job_id)) end
  return fence(job_id, node_id, attempt, job)
end
