-- job_submit: accept a job, idempotent on job id, and place it in the same script.
--   A resubmitted id returns the existing job (with its done message while retained) and moves
--   its deliveries to the caller's instance (counted, with a detach for the instance that had
--   them: lib.lua move_client); a different principal may not reuse the id.
--   Placement: the session's node if it still qualifies, else an eligible member of the first
--   candidate pool that has one: of the members with the most free slots, the least loaded (by
--   their last heartbeats), equal ones in turn; the slot is reserved and the assignment
--   delivered. With no free slot the job is queued until its queue deadline, or refused: per
--   pool and principal (priority, then age), the principals served in weighted fair order
--   (lib.lua, fair share). A job costing more than one slot goes only to a node with that many
--   free; it is refused when larger than every live member's capacity in all its pools (a job
--   for pools with no live member is queued).
-- KEYS[1] job hash                  K.job(job_id)
-- KEYS[2] counts                    K.counts()
-- derived: pools, pools index and its charges (K.pool_creator(), K.pools_created()), liveness,
--          heartbeat loads (K.beats()), node hashes/jobs/unavail, queues, deadlines, session,
--          tried set, exclusions, inboxes
-- ARGV[1]  caller instance
-- ARGV[2]  principal (client identity)
-- ARGV[3]  job id
-- ARGV[4]  candidate pool keys, JSON array of strings, best first
-- ARGV[5]  payload, raw JSON
-- ARGV[6]  session id or ''
-- ARGV[7]  priority (integer, higher first, -1000..1000)
-- ARGV[8]  services the job needs, JSON array of strings
-- ARGV[9]  ack timeout ms
-- ARGV[10] run timeout ms
-- ARGV[11] queue timeout ms
-- ARGV[12] max attempts
-- ARGV[13] '1' to queue when no slot is free, '0' to refuse
-- ARGV[14] max queued jobs in the namespace
-- ARGV[15] retention ms after a terminal state
-- ARGV[16] session ttl ms
-- ARGV[17] most pools with no member the principal's queued jobs may keep in the pools index
-- ARGV[18] W3C trace context: traceparent, then a space and the tracestate when there is one
--          ('' for none); kept in the job hash, carried by its assign and done deliveries
-- ARGV[19] fair share weight of the principal (a number > 0; the job's dispatches are charged
--          cost / weight of its pools' virtual time)
-- ARGV[20] cost: slots the job takes on its node (integer >= 1)
-- returns {{'new'|'duplicate', state, attempt, done message JSON or '', follows (duplicate),
--          trace (duplicate: the existing job's)}, deliveries}
-- errors  E_BAD_ARG, E_NOT_YOURS (id taken by another principal), E_NO_CAPACITY, E_TOO_BIG
--         (cost above the capacity of every live member of the job's pools), E_QUEUE_FULL
--         (the namespace's queue is full, or queueing would put more pools with no member in
--         the index for the principal than ARGV[17])
CALLER = ARGV[1]
local job_id = ARGV[3]
local jkey = KEYS[1]
local existing = hgetall(jkey)
if existing then
  if existing.principal ~= ARGV[2] then
    return err('E_NOT_YOURS', 'job id ' .. job_id .. ' belongs to another client')
  end
  if TERMINAL[existing.state] then
    redis.call('HSET', jkey, 'client', CALLER)
    return {{'duplicate', existing.state, tonumber(existing.attempt),
      done_message(job_id, existing), 0, existing.trace or ''}, {}}
  end
  local follows = move_client(job_id, jkey, existing)
  return {{'duplicate', existing.state, tonumber(existing.attempt), '', follows,
    existing.trace or ''}, LOCAL}
end
local ok, pools = pcall(cjson.decode, ARGV[4])
if not ok or type(pools) ~= 'table' or #pools == 0 then
  return err('E_BAD_ARG', 'a job needs at least one candidate pool')
end
local services = {}
if ARGV[8] ~= '[]' then
  local ok2
  ok2, services = pcall(cjson.decode, ARGV[8])
  if not ok2 or type(services) ~= 'table' then
    return err('E_BAD_ARG', 'services must be a JSON array')
  end
end
local priority = tonumber(ARGV[7])
if not priority or priority < -1000 or priority > 1000 or priority % 1 ~= 0 then
  return err('E_BAD_ARG', 'priority must be an integer in -1000..1000')
end
for i = 9, 12 do
  local v = tonumber(ARGV[i])
  if not v or v <= 0 then
    return err('E_BAD_ARG', 'timeouts and max_attempts must be > 0')
  end
end
local weight = tonumber(ARGV[19] or '1')
if not weight or not (weight > 0) or weight == math.huge then
  return err('E_BAD_ARG', 'fair share weight must be a finite number > 0')
end
local cost_s = ARGV[20] or '1'
local cost = tonumber(cost_s)
if not cost or cost < 1 or cost % 1 ~= 0 then
  return err('E_BAD_ARG', 'cost must be an integer >= 1')
end
if cost > 1 then
  local largest, members = 0, false
  for _, pool in ipairs(pools) do
    local top = redis.call('ZRANGE', K.pool_cap(pool), '0', '0', 'REV', 'WITHSCORES')
    if #top > 0 then
      members = true
      if tonumber(top[2]) > largest then largest = tonumber(top[2]) end
    end
  end
  if members and cost > largest then
    return err('E_TOO_BIG', 'the job costs ' .. cost_s .. ' slots; the largest live node of pools '
      .. ARGV[4] .. ' has ' .. int_s(largest))
  end
end
local now = now_ms()
-- seq orders the queues, spreads jobs over equal nodes and counts every job ever accepted (read
-- as total:submitted): taken before selection, given back when the job is refused
local seq = redis.call('HINCRBY', KEYS[2], 'seq', '1')
local function refuse(code, msg)
  redis.call('HINCRBY', KEYS[2], 'seq', '-1')
  return err(code, msg)
end
local node_id = select_node(job_id, pools, services, ARGV[6], now, true, seq, cost)
if not node_id then
  if ARGV[13] ~= '1' then
    return refuse('E_NO_CAPACITY', 'no free slot in pools ' .. ARGV[4] .. ' and queueing is off')
  end
  local queued = tonumber(redis.call('HGET', KEYS[2], 'queued') or '0')
  if queued >= tonumber(ARGV[14]) then
    return refuse('E_QUEUE_FULL', 'queue is full (' .. queued .. ' jobs waiting)')
  end
  -- pools not in the index have no member and no queued job: queueing creates them
  local created, seen = 0, {}
  for _, pool in ipairs(pools) do
    if not seen[pool] and not redis.call('ZSCORE', K.pools(), pool) then created = created + 1 end
    seen[pool] = true
  end
  if created > 0 then
    local held = tonumber(redis.call('HGET', K.pools_created(), ARGV[2]) or '0')
    if held + created > tonumber(ARGV[17]) then
      return refuse('E_QUEUE_FULL', 'queueing would create ' .. created .. ' pool(s) with no member;'
        .. ' this principal already keeps ' .. held .. ' in existence (limit ' .. ARGV[17] .. ')')
    end
  end
end
local seq_s = int_s(seq)
local now_s = int_s(now)
-- What the helpers read of the job; its hash gets the flat list below in one HSET together
-- with the assignment's (or the queueing's) fields. Both are built by constructors: a table
-- filled field by field, then flattened, costs more than the rest of the script.
local job = {
  state = '', attempt = '0', pools = ARGV[4], payload = ARGV[5], session = ARGV[6],
  priority = ARGV[7], ack_ms = ARGV[9], queue_ms = ARGV[11], session_ms = ARGV[16], seq = seq_s,
  principal = ARGV[2], trace = ARGV[18] or '', t_sub = now_s, cost = cost_s,
  fw = ARGV[19] or '1',
}
local flat = {
  'principal', ARGV[2], 'client', CALLER, 'pools', ARGV[4], 'payload', ARGV[5],
  'priority', ARGV[7], 'ack_ms', ARGV[9], 'run_ms', ARGV[10], 'queue_ms', ARGV[11],
  'max_attempts', ARGV[12], 'retain_ms', ARGV[15], 'seq', seq_s, 't_sub', now_s,
}
-- A session and services are written only when the job has them (every reader, of this version
-- and of the ones before, takes an absent session as '' and absent services as []): the hash
-- is a listpack, where each new field is looked up among the ones before it, so every field
-- costs the HSET more than the one before (docs/decisions/0003-lean-job-scripts.md).
local n = #flat
if ARGV[6] ~= '' then
  flat[n + 1], flat[n + 2], flat[n + 3], flat[n + 4] = 'session', ARGV[6], 'session_ms', ARGV[16]
  n = n + 4
end
if ARGV[8] ~= '[]' then
  flat[n + 1], flat[n + 2] = 'services', ARGV[8]
  n = n + 2
end
if job.trace ~= '' then
  flat[n + 1], flat[n + 2] = 'trace', job.trace
  n = n + 2
end
-- cost and weight likewise only when not 1 (absent reads as 1)
if cost ~= 1 then
  flat[n + 1], flat[n + 2] = 'cost', cost_s
  n = n + 2
end
if weight ~= 1 then
  flat[n + 1], flat[n + 2] = 'fw', ARGV[19]
end
index_submit(job_id, ARGV[2], now_s)
if node_id then
  assign(job_id, job, node_id, now, flat, now_s)
else
  local n = #flat
  flat[n + 1], flat[n + 2] = 'attempt', '0'
  enqueue(job_id, job, now, flat)
end
return {{'new', job.state, tonumber(job.attempt), ''}, LOCAL, EVENTS}
