-- Stage chains and fan-out, included after lib.lua. Rules of this file:
--  * a pipeline is a hash at K.job(<pipeline id>) with kind 'pipeline': it holds the stage
--    records (JSON, keyed by stage name), the original payload, the outputs of the stages that
--    ended ('out:<name>'), the outcome of every branch that ended ('br:<branch>') and the count
--    of branches still running ('pending'); it is never assigned, queued or counted by state;
--  * a stage is a job of its own (K.job(<pipeline id>//<stage name>), field 'pipe') that runs
--    through the job machinery unchanged (fencing, retries, reassignment, deadlines); its done
--    goes to no client: finish hands its end to stage_ended in the same script, which delivers
--    stage_done to the pipeline's client and creates and places the next stage(s) there and
--    then, so no hand-off can be lost between two scripts;
--  * the pipeline turns terminal exactly once (pipeline_close): from then on a stage that ends
--    changes nothing of it, and its client gets exactly one done.

local STAGE_SEP = '//'

local function stage_job_id(pipe_id, name)
  return pipe_id .. STAGE_SEP .. name
end

-- Why queueing a job of principal in these pools is refused (nil: it is not), for job_submit
-- and for a pipeline's later stages: the namespace's queue limit, and the pools with no member
-- a principal's queued jobs keep in the index.
local function queue_refusal(pools, principal, max_queued, max_created)
  local queued = tonumber(redis.call('HGET', K.counts(), 'queued') or '0')
  if queued >= tonumber(max_queued) then
    return 'queue is full (' .. queued .. ' jobs waiting)'
  end
  -- pools not in the index have no member and no queued job: queueing creates them
  local created, seen = 0, {}
  for _, pool in ipairs(pools) do
    if not seen[pool] and not redis.call('ZSCORE', K.pools(), pool) then created = created + 1 end
    seen[pool] = true
  end
  if created > 0 then
    local held = tonumber(redis.call('HGET', K.pools_created(), principal) or '0')
    if held + created > tonumber(max_created) then
      return 'queueing would create ' .. created .. ' pool(s) with no member; this principal'
        .. ' already keeps ' .. held .. ' in existence (limit ' .. max_created .. ')'
    end
  end
  return nil
end

-- The payload of a stage after the first: the previous stage's output (raw JSON), unchanged
-- when the stage names no field of the original payload; else an object: the output's own
-- members (an output that is not an object becomes {input = output}) with the named members
-- of the original payload over them.
local function stage_input(payload, output, with)
  if not with or #with == 0 then return output end
  local o = cjson.decode(output)
  if type(o) ~= 'table' or o[1] ~= nil or next(o) == nil and string.sub(output, 1, 1) == '[' then
    o = {input = o}
  end
  local ok, src = pcall(cjson.decode, payload)
  if ok and type(src) == 'table' then
    for _, f in ipairs(with) do
      if src[f] ~= nil then o[f] = src[f] end
    end
  end
  return cjson.encode(o)
end

-- Create stage `name` of the pipeline with this payload and place it: a free node of its first
-- pool that has one (the session's node first), else its queues. Returns nil, or the error
-- (a JSON text {code, message}) when it can be neither placed nor queued.
-- att_from: the job whose attachments become the stage's input (the stage before it: its
-- output; the pipeline itself for its first stage: the submit's, side 'in'), or nil.
local function create_stage(pipe_id, p, name, rec, payload, now, att_from, att_side)
  local sid = stage_job_id(pipe_id, name)
  if redis.call('EXISTS', K.job(sid)) == 1 then -- job ids with '//' are refused at submit
    return cjson.encode({code = 'E_BAD_STATE', message = 'stage ' .. name .. ': job ' .. sid
      .. ' exists already'})
  end
  local seq = redis.call('HINCRBY', K.counts(), 'seq', '1')
  local pools_json = cjson.encode(rec.pools)
  local services = rec.services or {}
  local now_s = int_s(now)
  -- affinity per stage: a session's stage keeps to the node that served that stage last
  local session = (p.session and p.session ~= '') and (p.session .. STAGE_SEP .. name) or ''
  local job = {
    state = '', attempt = '0', pools = pools_json, payload = payload, session = session,
    priority = p.priority, ack_ms = rec.ack_ms, queue_ms = rec.queue_ms,
    session_ms = p.session_ms, seq = int_s(seq), principal = p.principal, trace = p.trace or '',
    t_sub = now_s,
  }
  local node_id = select_node(sid, rec.pools, services, job.session, now, true, seq, nil,
    p.principal or '')
  if not node_id then
    local why
    if p.queue ~= '1' then
      why = cjson.encode({code = 'E_NO_CAPACITY', message = 'stage ' .. name
        .. ': no free slot in pools ' .. pools_json .. ' and queueing is off'})
    else
      local r = queue_refusal(rec.pools, p.principal, p.max_queued, p.max_created)
      if r then why = cjson.encode({code = 'E_QUEUE_FULL', message = 'stage ' .. name .. ': ' .. r}) end
    end
    if why then
      redis.call('HINCRBY', K.counts(), 'seq', '-1')
      return why
    end
  end
  local flat = {
    'principal', p.principal, 'client', '', 'pools', pools_json, 'payload', payload,
    'priority', p.priority, 'ack_ms', rec.ack_ms, 'run_ms', rec.run_ms, 'queue_ms', rec.queue_ms,
    'max_attempts', rec.max_attempts, 'retain_ms', p.retain_ms, 'seq', job.seq, 't_sub', now_s,
    'pipe', pipe_id, 'stage', name,
  }
  local n = #flat
  if job.session ~= '' then
    flat[n + 1], flat[n + 2], flat[n + 3], flat[n + 4] = 'session', job.session, 'session_ms',
      p.session_ms
    n = n + 4
  end
  if #services > 0 then
    flat[n + 1], flat[n + 2] = 'services', cjson.encode(services)
    n = n + 2
  end
  if job.trace ~= '' then
    flat[n + 1], flat[n + 2] = 'trace', job.trace
  end
  if att_from then job.att = pass_attachments(att_from, sid, false, att_side) end
  index_submit(sid, p.principal, now_s)
  if node_id then
    assign(sid, job, node_id, now, flat, now_s)
  else
    n = #flat
    flat[n + 1], flat[n + 2] = 'attempt', '0'
    enqueue(sid, job, now, flat)
  end
  return nil
end

local PIPE_FIELDS = {'state', 'client', 'principal', 'stages', 'pending', 'fail_fast', 'payload',
  'trace', 'session', 'priority', 'retain_ms', 'session_ms', 'queue', 'max_queued',
  'max_created', 't_sub', 'failed_stage', 'oseq'}

-- The pipeline's done output: {stages = {name: output}, branches = {branch: outcome}}, built as
-- text from the raw JSON the hash holds.
local function pipeline_output(pkey)
  local h = hgetall(pkey) or {}
  local outs, brs = {}, {}
  for k, v in pairs(h) do
    local pre = string.sub(k, 1, 4)
    if pre == 'out:' then
      outs[#outs + 1] = cjson.encode(string.sub(k, 5)) .. ':' .. v
    elseif pre == 'brn:' then
      brs[#brs + 1] = cjson.encode(string.sub(k, 5)) .. ':' .. v
    end
  end
  return '{"stages":{' .. table.concat(outs, ',') .. '},"branches":{' .. table.concat(brs, ',')
    .. '}}'
end

-- The pipeline ends in `state` (once): its hash records it, its indices move, it is retained
-- for its retention time and its client gets one done. Stages still running are canceled
-- (their nodes are told) and do not change it any more.
local function pipeline_close(pipe_id, p, state, error_json, reason, now)
  local pkey = K.job(pipe_id)
  local now_s = int_s(now)
  local output = pipeline_output(pkey)
  local ok = state == 'done' and '1' or '0'
  redis.call('HSET', pkey, 'state', state, 't_fin', now_s, 'ok', ok, 'output', output,
    'error', error_json or 'null')
  redis.call('ZREM', K.jobs_in('active'), pipe_id)
  redis.call('ZADD', K.jobs_in(state), p.t_sub or '0', pipe_id)
  redis.call('ZADD', K.gc(), int_s(now + tonumber(p.retain_ms)), 'j:' .. pipe_id)
  local old = p.state
  p.state, p.ok, p.output, p.error, p.t_fin = state, ok, output, error_json or 'null', now_s
  job_event(pipe_id, state, 0, '')
  local msg = done_message(pipe_id, p)
  if not (p.oseq and p.oseq ~= '' and order_done(p, msg, now)) then deliver(p.client, msg) end
  if old == 'running' then
    for name, _ in pairs(cjson.decode(p.stages)) do
      local sid = stage_job_id(pipe_id, name)
      local sj = hgetall(K.job(sid))
      if sj and not TERMINAL[sj.state] then
        local node_id = release(sid, sj)
        if node_id and node_id ~= '' then
          local owner = redis.call('HGET', K.node(node_id), 'owner')
          deliver(owner, {'cancel', node_id, sid, tonumber(sj.attempt), reason})
        end
        finish(sid, sj, 'canceled', {ok = 0, error = cjson.encode({code = 'E_CANCELED',
          message = reason})}, now)
        if node_id and node_id ~= '' then feed_node(node_id, now) end
      end
    end
  end
end

-- A branch ended (its last stage done, or a stage of it failed): one fewer pending; the
-- pipeline ends when none is left (done when every branch ended done).
-- A branch's last stage ended done: its output attachments become the pipeline's (named
-- '<branch>/<name>' on a branch, so that branches cannot clash), carried by the pipeline's done.
local function keep_outputs(pipe_id, sid, branch)
  local att = redis.call('HGET', K.job(sid), 'out_att')
  if not att or att == '' then return end
  local specs = cjson.decode(att)
  local names = {}
  for i, spec in ipairs(specs) do names[i] = 'out:' .. spec.name end
  local data = redis.call('HMGET', K.job_blobs(sid), unpack_list(names))
  local pkey = K.job(pipe_id)
  local have = redis.call('HGET', pkey, 'out_att')
  local list = (have and have ~= '') and cjson.decode(have) or {}
  local flat, size = {}, 0
  for i, spec in ipairs(specs) do
    if data[i] then
      local name = (branch and branch ~= '') and (branch .. '/' .. spec.name) or spec.name
      flat[#flat + 1] = 'out:' .. name
      flat[#flat + 1] = data[i]
      list[#list + 1] = {name = name, size = #data[i], media_type = spec.media_type}
      size = size + #data[i]
    end
  end
  if #flat == 0 then return end
  redis.call('HSET', K.job_blobs(pipe_id), unpack_list(flat))
  redis.call('HSET', pkey, 'out_att', cjson.encode(list))
  redis.call('HINCRBY', pkey, 'att_bytes', int_s(size))
end

local function branch_ended(pipe_id, p, pkey, branch, outcome, now)
  redis.call('HSET', pkey, 'brn:' .. branch, outcome)
  local pending = redis.call('HINCRBY', pkey, 'pending', '-1')
  if pending > 0 then return end
  local failed = p.failed_stage
  if failed and failed ~= '' then
    pipeline_close(pipe_id, p, 'failed', cjson.encode({code = 'E_STAGE_FAILED',
      message = 'stage ' .. failed .. ' failed'}), 'pipeline ended', now)
  else
    pipeline_close(pipe_id, p, 'done', nil, 'pipeline ended', now)
  end
end

-- finish's hand-off for a stage job (job.pipe set): record its end in its pipeline, tell the
-- pipeline's client (stage_done), and start the next stage(s) or end the branch.
stage_ended = function(sid, job, state, now)
  local pipe_id = job.pipe
  local pkey = K.job(pipe_id)
  local p = hmget(pkey, PIPE_FIELDS)
  if not p or p.state ~= 'running' then return end
  local name = job.stage or redis.call('HGET', K.job(sid), 'stage')
  local stages = cjson.decode(p.stages)
  local rec = stages[name]
  if not rec then return end
  local output = job.output or 'null'
  local error_json = job.error or 'null'
  if state == 'done' then redis.call('HSET', pkey, 'out:' .. name, output) end
  -- {'stage_done', pipeline, stage, branch, index, state, output, error, principal, trace}
  deliver(p.client, '["stage_done",' .. cjson.encode(pipe_id) .. ',' .. cjson.encode(name) .. ','
    .. cjson.encode(rec.branch) .. ',' .. int_s(rec.index) .. ',"' .. state .. '",'
    .. cjson.encode(state == 'done' and output or 'null') .. ',' .. cjson.encode(error_json) .. ','
    .. cjson.encode(p.principal or '') .. ',' .. cjson.encode(p.trace or '') .. ']')
  if state == 'done' then
    local nexts = rec.next or {}
    if #nexts == 0 then
      keep_outputs(pipe_id, sid, rec.branch)
      branch_ended(pipe_id, p, pkey, rec.branch, '{"state":"done","stage":' .. cjson.encode(name)
        .. '}', now)
      return
    end
    if #nexts > 1 then redis.call('HINCRBY', pkey, 'pending', int_s(#nexts - 1)) end
    for _, nxt in ipairs(nexts) do
      local nrec = stages[nxt]
      local why = create_stage(pipe_id, p, nxt, nrec, stage_input(p.payload, output, nrec.with),
        now, sid)
      if why then
        if not p.failed_stage or p.failed_stage == '' then
          p.failed_stage = nxt
          redis.call('HSET', pkey, 'failed_stage', nxt)
        end
        branch_ended(pipe_id, p, pkey, nrec.branch, '{"state":"failed","stage":'
          .. cjson.encode(nxt) .. ',"error":' .. why .. '}', now)
        if p.state ~= 'running' then return end
        if p.fail_fast == '1' then
          pipeline_close(pipe_id, p, 'failed', cjson.encode({code = 'E_STAGE_FAILED',
            message = 'stage ' .. nxt .. ' failed (fail_fast)'}), 'a sibling branch failed', now)
          return
        end
      end
    end
    return
  end
  if not p.failed_stage or p.failed_stage == '' then
    p.failed_stage = name
    redis.call('HSET', pkey, 'failed_stage', name)
  end
  branch_ended(pipe_id, p, pkey, rec.branch, '{"state":"' .. state .. '","stage":'
    .. cjson.encode(name) .. ',"error":' .. error_json .. '}', now)
  if p.state == 'running' and p.fail_fast == '1' then
    pipeline_close(pipe_id, p, 'failed', cjson.encode({code = 'E_STAGE_FAILED',
      message = 'stage ' .. name .. ' failed (fail_fast)'}), 'a sibling branch failed', now)
  end
end

-- Accept a pipeline (job_submit with stages): its hash, then its first stage, placed or queued
-- in the same script. Returns the job_submit reply, or an error reply with nothing written.
-- a: {principal, pipe_id, payload, session, priority, stages JSON, queue, max_queued,
--     retain_ms, session_ms, max_created, trace, fail_fast}
local function pipeline_submit(a, now)
  local ok, stages = pcall(cjson.decode, a.stages)
  if not ok or type(stages) ~= 'table' or not stages['0'] then
    return err('E_BAD_ARG', 'stages must be a JSON object of stage records with a stage "0"')
  end
  local pkey = K.job(a.pipe_id)
  local now_s = int_s(now)
  local p = {
    state = 'running', client = CALLER, principal = a.principal, stages = a.stages,
    pending = '1', fail_fast = a.fail_fast, payload = a.payload, trace = a.trace,
    session = a.session, priority = a.priority, retain_ms = a.retain_ms,
    session_ms = a.session_ms, queue = a.queue, max_queued = a.max_queued,
    max_created = a.max_created, t_sub = now_s, attempt = '0', oseq = a.oseq,
  }
  local flat = {'kind', 'pipeline', 'attempt', '0', 'node', '', 'pools', '[]'}
  for _, k in ipairs({'state', 'client', 'principal', 'stages', 'pending', 'fail_fast', 'payload',
      'trace', 'session', 'priority', 'retain_ms', 'session_ms', 'queue', 'max_queued',
      'max_created', 't_sub', 'oseq'}) do
    flat[#flat + 1] = k
    flat[#flat + 1] = p[k]
  end
  redis.call('HSET', pkey, unpack_list(flat))
  local why = create_stage(a.pipe_id, p, '0', stages['0'], a.payload, now, a.pipe_id, 'in')
  if why then
    redis.call('DEL', pkey, K.job_blobs(a.pipe_id))
    local e = cjson.decode(why)
    return err(e.code, e.message)
  end
  index_submit(a.pipe_id, a.principal, now_s)
  return {{'new', 'running', 0, ''}, LOCAL, EVENTS}
end
