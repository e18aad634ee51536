-- submit.lua: the body of job_submit, a function of its KEYS and ARGV (job_submit.lua's header
-- lists them), so that job_submit calls it once and job_submit_many once per job. It returns
-- what job_submit returns: a refusal is an error reply (a table with 'err'), never raised, and
-- leaves no job, index entry, queue entry or token taken: only the counters a refusal keeps
-- (the principal's 'refused:<code>', its tenants entry, its stored in-flight cap, selection's
-- exclusion counts).
local function submit_job(KEYS, ARGV)
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
  if wait <= 0 and (cap == '' or principal_can_run(principal, 1)) then
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
    cost = cost_s, fw = ARGV[32] or '1', pbytes = int_s(pbytes),
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
end
