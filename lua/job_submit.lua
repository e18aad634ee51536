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
-- ARGV[19] max jobs in flight (assigned and running) of the principal ('' none): kept as its
--          usage's 'cap_inflight', which every dispatch path reads (principal_can_run)
-- ARGV[20] max queued jobs of the principal ('' none)
-- ARGV[21] max payload bytes of the principal's jobs not yet ended ('' none)
-- ARGV[22] submits per second of the principal: its token bucket's rate ('' none)
-- ARGV[23] its token bucket's size (with ARGV[22])
-- ARGV[24] ms from now before which the job is not placed ('0': place it now); a later job
--          waits in state 'delayed' in K.delayed() until the reaper releases it
-- ARGV[25] backoff of a retryable failure: '<base ms> <cap ms>'
-- ARGV[26] '1': keep the payload when the job ends done (else it is dropped then)
-- ARGV[27] retention bounds of the principal's finished jobs: '<count> <bytes>'
-- ARGV[28] stages: '' for a plain job, else a pipeline's stage records, a JSON object keyed by
--          stage name (docs/architecture.md, Stage chains); ARGV[4] and ARGV[8..12] are then
--          unused (each record has its own pools, services, timeouts and attempts)
-- ARGV[29] '1': the first branch of the pipeline that fails cancels the others
-- ARGV[30] seq in the ordered session (ARGV[6], of this principal; an integer >= 0), or '' (or
--          absent) for a job outside any ordered session
-- ARGV[31] gap timeout ms of the ordered session (with ARGV[30]; the latest submit's holds)
-- ARGV[32] fair share weight of the principal (a number > 0; the job's dispatches are charged
--          cost / weight of its pools' virtual time)
-- ARGV[33] cost: slots the job takes on its node (integer >= 1)
-- ARGV[34] the submit's attachments, a JSON array of {name, size, media_type}, or '' for none;
--          kept in the job hash (att, with their total size in att_bytes), carried by assign
-- ARGV[35..] the bytes of each attachment, in that order: kept in job_blobs as 'in:<name>'
-- returns {{'new'|'duplicate', state, attempt, done message JSON or '', follows (duplicate),
--          trace (duplicate: the existing job's)}, deliveries}; a duplicate of a finished job of
--          an ordered session carries no done: its session delivers it in its turn (or did)
-- errors  E_BAD_ARG, E_NOT_YOURS (id taken by another principal), E_NO_CAPACITY, E_TOO_BIG
--         (cost above the capacity of every live member of the job's pools), E_QUEUE_FULL
--         (the namespace's queue is full, or queueing would put more pools with no member in
--         the index for the principal than ARGV[17]), E_QUOTA '<quota> ...' (max_queued,
--         max_payload_bytes), E_RATE_LIMITED '... retry_after_ms=<ms>' (the principal's
--         bucket has no token; a duplicate takes none). Each refusal is counted in the
--         principal's usage as 'refused:<code>'. E_DUPLICATE_SEQ (another job has the seq in
--         the session, or the session already reported it skipped)
CALLER = ARGV[1]
local job_id = ARGV[3]
local jkey = KEYS[1]
local existing = hgetall(jkey)
if existing then
  if existing.principal ~= ARGV[2] then
    return err('E_NOT_YOURS', 'job id ' .. job_id .. ' belongs to another client')
  end
  local ordered = existing.oseq and existing.oseq ~= ''
  if ordered then -- the session's results come to the caller's instance from now on
    local oid = order_id(existing.principal, existing.session)
    if redis.call('EXISTS', K.order(oid)) == 1 then
      order_move(oid, existing.principal, existing.session)
      order_release(oid, now_ms())
    else
      ordered = false
    end
  end
  if TERMINAL[existing.state] then
    redis.call('HSET', jkey, 'client', CALLER)
    local done = done_message(job_id, existing)
    if ordered then done = '' end -- the session delivers it in its turn, or did
    return {{'duplicate', existing.state, tonumber(existing.attempt), done, 0,
      existing.trace or ''}, LOCAL}
  end
  local follows = move_client(job_id, jkey, existing)
  return {{'duplicate', existing.state, tonumber(existing.attempt), '', follows,
    existing.trace or ''}, LOCAL}
end
-- a pipeline's pools, services, timeouts and attempts are in its stage records (ARGV[28])
local is_pipe = ARGV[28] ~= nil and ARGV[28] ~= ''
local ok, pools = pcall(cjson.decode, ARGV[4])
if not is_pipe and (not ok or type(pools) ~= 'table' or #pools == 0) then
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
  if not is_pipe and (not v or v <= 0) then
    return err('E_BAD_ARG', 'timeouts and max_attempts must be > 0')
  end
end
local oseq, oid = ARGV[30] or '', nil
if oseq ~= '' then
  local n_seq, gap = tonumber(oseq), tonumber(ARGV[31])
  if ARGV[6] == '' or not n_seq or n_seq < 0 or n_seq % 1 ~= 0 or not gap or gap <= 0 then
    return err('E_BAD_ARG', 'a seq needs a session and is an integer >= 0, with a gap timeout > 0')
  end
  oseq = int_s(n_seq)
  oid = order_id(ARGV[2], ARGV[6])
  local taken = redis.call('HGET', K.order_seqs(oid), oseq)
  if taken then
    return err('E_DUPLICATE_SEQ', 'seq ' .. oseq .. ' of session ' .. ARGV[6] .. ' is job '
      .. taken)
  end
  local nxt = redis.call('HGET', K.order(oid), 'next')
  if nxt and n_seq < tonumber(nxt) then
    return err('E_DUPLICATE_SEQ', 'seq ' .. oseq .. ' of session ' .. ARGV[6]
      .. ' was already reported skipped')
  end
end
local weight = tonumber(ARGV[32] or '1')
if not weight or not (weight > 0) or weight == math.huge then
  return err('E_BAD_ARG', 'fair share weight must be a finite number > 0')
end
local cost_s = ARGV[33] or '1'
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
-- The job (or pipeline) takes its seq in the ordered session: the session starts at seq 0, and
-- its results go to the caller's instance from now on.
local function order_register(oid, oseq, now)
  local okey = K.order(oid)
  redis.call('HSETNX', okey, 'next', '0')
  order_move(oid, ARGV[2], ARGV[6])
  redis.call('HSET', okey, 'gap_ms', ARGV[31])
  redis.call('HSET', K.order_seqs(oid), oseq, job_id)
  order_touch(oid, tonumber(ARGV[15]) + tonumber(ARGV[31]))
  order_release(oid, now)
end
local principal = ARGV[2]
local ukey = K.usage(principal)
local usage = redis.call('HMGET', ukey, 'queued', 'bytes', 'cap_inflight')
local function refuse_quota(code, msg)
  redis.call('HINCRBY', ukey, 'refused:' .. code, '1')
  redis.call('ZADD', K.tenants(), int_s(now), principal)
  return err(code, msg)
end
local rate = tonumber(ARGV[22] or '')
local tokens = nil
if rate then
  local burst = tonumber(ARGV[23])
  tokens = bucket_level(ukey, rate, burst, now)
  if tokens < 1 then
    local wait = math.ceil((1 - tokens) * 1000 / rate)
    return refuse_quota('E_RATE_LIMITED', 'submit rate of principal ' .. principal
      .. ' is over ' .. ARGV[22] .. '/s (burst ' .. ARGV[23] .. '); retry_after_ms=' .. wait)
  end
end
local pbytes = #ARGV[5]
local max_bytes = tonumber(ARGV[21] or '')
if max_bytes and (tonumber(usage[2]) or 0) + pbytes > max_bytes then
  return refuse_quota('E_QUOTA', 'max_payload_bytes: the jobs of principal ' .. principal
    .. ' not yet ended hold ' .. (usage[2] or '0') .. ' payload bytes; this one (' .. pbytes
    .. ') would pass the limit of ' .. ARGV[21])
end
local cap = ARGV[19] or ''
if (usage[3] or '') ~= cap then
  if cap == '' then redis.call('HDEL', ukey, 'cap_inflight')
  else redis.call('HSET', ukey, 'cap_inflight', cap) end
end
if is_pipe then
  -- a pipeline takes a token of the principal's bucket as a job does; its stages are jobs,
  -- each counted in the principal's usage as it is created
  if tokens then redis.call('HSET', ukey, 'tokens', tostring(tokens - 1), 't_tok', int_s(now)) end
  -- the submit's attachments are the pipeline's input: its first stage gets them
  if ARGV[34] and ARGV[34] ~= '' then
    local blobs, size = {}, 0
    for i, spec in ipairs(cjson.decode(ARGV[34])) do
      blobs[2 * i - 1], blobs[2 * i] = 'in:' .. spec.name, ARGV[34 + i]
      size = size + #ARGV[34 + i]
    end
    redis.call('HSET', K.job_blobs(job_id), unpack_list(blobs))
    redis.call('HSET', jkey, 'att', ARGV[34], 'att_bytes', int_s(size))
  end
  local reply = pipeline_submit({principal = ARGV[2], pipe_id = job_id, payload = ARGV[5],
    session = ARGV[6], priority = ARGV[7], stages = ARGV[28], queue = ARGV[13],
    max_queued = ARGV[14], retain_ms = ARGV[15], session_ms = ARGV[16], max_created = ARGV[17],
    trace = ARGV[18] or '', fail_fast = ARGV[29] or '0', oseq = oid and oseq or ''}, now)
  if type(reply[1]) ~= 'table' then -- refused: nothing of it stays
    redis.call('DEL', jkey, K.job_blobs(job_id))
    return reply
  end
  -- a pipeline of an ordered session: its one done comes in the session's seq order
  if oid then order_register(oid, oseq, now) end
  return reply
end
-- seq orders the queues, spreads jobs over equal nodes and counts every job ever accepted (read
-- as total:submitted): taken before selection, given back when the job is refused
local seq = redis.call('HINCRBY', KEYS[2], 'seq', '1')
local function refuse(code, msg)
  redis.call('HINCRBY', KEYS[2], 'seq', '-1')
  return refuse_quota(code, msg)
end
local wait = tonumber(ARGV[24] or '0') or 0
local node_id = nil
if wait <= 0 and principal_can_run(principal, 1) then
  node_id = select_node(job_id, pools, services, ARGV[6], now, true, seq, cost, principal, true)
end
-- a job that waits (queued or delayed) counts against the principal's queued jobs
local max_queued = tonumber(ARGV[20] or '')
if not node_id and max_queued and (tonumber(usage[1]) or 0) >= max_queued then
  return refuse('E_QUOTA', 'max_queued: principal ' .. principal .. ' has ' .. (usage[1] or '0')
    .. ' jobs queued or delayed (limit ' .. ARGV[20] .. ')')
end
if not node_id and wait <= 0 then
  if ARGV[13] ~= '1' then
    return refuse('E_NO_CAPACITY', 'no free slot in pools ' .. ARGV[4] .. ' and queueing is off')
  end
  local why = queue_refusal(pools, ARGV[2], ARGV[14], ARGV[17])
  if why then return refuse('E_QUEUE_FULL', why) end
end
local seq_s = int_s(seq)
local now_s = int_s(now)
-- What the helpers read of the job; its hash gets the flat list below in one HSET together
-- with the assignment's (or the queueing's) fields. Both are built by constructors: a table
-- filled field by field, then flattened, costs more than the rest of the script.
local job = {
  state = '', attempt = '0', pools = ARGV[4], payload = ARGV[5], session = ARGV[6],
  priority = ARGV[7], ack_ms = ARGV[9], queue_ms = ARGV[11], session_ms = ARGV[16], seq = seq_s,
  principal = ARGV[2], trace = ARGV[18] or '', t_sub = now_s, att = ARGV[34] or '',
  cost = cost_s, fw = ARGV[32] or '1',
}
local flat = {
  'principal', ARGV[2], 'client', CALLER, 'pools', ARGV[4], 'payload', ARGV[5],
  'priority', ARGV[7], 'ack_ms', ARGV[9], 'run_ms', ARGV[10], 'queue_ms', ARGV[11],
  'max_attempts', ARGV[12], 'retain_ms', ARGV[15], 'seq', seq_s, 't_sub', now_s,
  'pbytes', int_s(pbytes),
  'backoff', ARGV[25] or '', 'rlim', ARGV[27] or '',
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
  flat[n + 1], flat[n + 2] = 'fw', ARGV[32]
  n = n + 2
end
if job.att ~= '' then
  local blobs, size = {}, 0
  for i, spec in ipairs(cjson.decode(job.att)) do
    local data = ARGV[34 + i]
    blobs[2 * i - 1], blobs[2 * i] = 'in:' .. spec.name, data
    size = size + #data
  end
  redis.call('HSET', K.job_blobs(job_id), unpack_list(blobs))
  flat[n + 1], flat[n + 2], flat[n + 3], flat[n + 4] = 'att', job.att, 'att_bytes', int_s(size)
  n = n + 4
end
if oid then
  flat[n + 1], flat[n + 2] = 'oseq', oseq
  n = n + 2
  order_register(oid, oseq, now)
end
if ARGV[26] == '1' then
  flat[n + 1], flat[n + 2] = 'keep', '1'
  n = n + 2
end
if tokens then redis.call('HSET', ukey, 'tokens', tostring(tokens - 1), 't_tok', now_s) end
redis.call('ZADD', K.tenants(), now_s, principal)
index_submit(job_id, ARGV[2], now_s)
fair_active(pools, principal, ARGV[32] or '1', now)
if node_id then
  assign(job_id, job, node_id, now, flat, now_s)
elseif wait > 0 then
  local n = #flat
  flat[n + 1], flat[n + 2] = 'attempt', '0'
  delay_job(job_id, job, now + wait, flat)
else
  local n = #flat
  flat[n + 1], flat[n + 2] = 'attempt', '0'
  enqueue(job_id, job, now, flat)
end
return {{'new', job.state, tonumber(job.attempt), ''}, LOCAL, EVENTS}
