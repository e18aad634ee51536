-- A node's result for one attempt, included after lib.lua and stages.lua: what job_result does
-- for one call and job_result_many for each item of a node's burst. Rules of this file:
--  * record_result fences (node, attempt, not terminal) before it writes anything, so a refused
--    result changed nothing; its caller may go on with other jobs in the same script;
--  * a repeat of the result that finished the attempt is a reported no-op ('duplicate');
--  * every other path frees the slot and feeds the node in the same call, and the client's
--    instance gets exactly one done (a stage of a pipeline: its pipeline's stage_ended).

-- The node finished attempt n of job_id; the job ends done (ok) or failed (not ok), or waits
-- its backoff (a retryable failure with attempts left).
-- r: the result: job_id, node_id, attempt (text), ok ('1' or '0'), output (raw JSON), error (raw
--    JSON {code, message} or 'null'), accepted ('1': the node's accept of this attempt came with
--    it: the job passes through running as job_accept would have made it, and a finished
--    attempt is refused as job_accept refuses it), retryable ('1'), draw (text: the backoff's
--    jitter draw in [0, 1)), att (the attachments' JSON list, '' for none) and blobs (their
--    bytes, in that order).
-- Returns {state ('delayed' when retried later), 'new'|'duplicate'}, or nil and an error reply
-- (E_NO_JOB, E_STALE_ATTEMPT).
local function record_result(r)
  local job_id, node_id, attempt = r.job_id, r.node_id, r.attempt
  local jkey = K.job(job_id)
  local accepted = r.accepted == '1'
  -- what fencing, releasing and finishing read (not the payload, which may be large)
  local job = hmget(jkey, {'state', 'node', 'attempt', 'client', 'pools', 'retain_ms', 't_sub',
    't_asg', 't_acc', 'principal', 'trace', 'max_attempts', 'backoff', 'pipe', 'stage',
    'session', 'oseq', 'cost', 'fpool', 'pbytes', 'keep', 'rlim', 'att', 'att_bytes', 'out_att',
    'seq'})
  if job and TERMINAL[job.state] and job.node == node_id and job.attempt == attempt
      and not accepted then
    return {job.state, 'duplicate'}
  end
  local e
  job, e = fence(job_id, node_id, attempt, job)
  if e then return nil, e end
  local now = now_ms()
  local _, node_now = release(job_id, job)
  local ok = r.ok == '1'
  local fields = {ok = ok and '1' or '0', output = r.output, error = r.error}
  if r.att and r.att ~= '' then
    local blobs, size = {}, 0
    for i, spec in ipairs(cjson.decode(r.att)) do
      local data = r.blobs[i]
      blobs[2 * i - 1], blobs[2 * i] = 'out:' .. spec.name, data
      size = size + #data
    end
    redis.call('HSET', K.job_blobs(job_id), unpack_list(blobs))
    redis.call('HINCRBY', jkey, 'att_bytes', size)
    fields.out_att = r.att
  end
  if accepted and job.state ~= 'running' then
    -- job_accept's effects; its run deadline would be removed at once by finish; the counts
    -- move once, from where the job was to where it ends (pass_state)
    pass_state(job_id, job, 'running')
    job.state = 'running'
    fields.t_acc = now
  end
  if not ok and r.retryable == '1'
      and tonumber(job.attempt) < tonumber(job.max_attempts or '1') then
    local draw = tonumber(r.draw) or 0
    if draw < 0 or draw >= 1 then draw = 0 end
    local ok_e, e_info = pcall(cjson.decode, r.error)
    local why = ok_e and type(e_info) == 'table' and e_info.message or ''
    retry_later(job_id, job, node_id, 'retryable failure on node ' .. node_id .. ': '
      .. tostring(why), now, draw)
    feed_node(node_id, now, node_now)
    return {job.state, 'new'}
  end
  finish(job_id, job, ok and 'done' or 'failed', fields, now)
  -- a stage's next stage may have taken a slot of this node since it was released
  feed_node(node_id, now, not job.pipe and node_now or nil)
  return {job.state, 'new'}
end

-- The node accepted attempt n of job_id: the run deadline starts (job_accept, and an accept that
-- job_result_many finds without its result). A repeated accept of the running attempt is a
-- no-op. Returns {'running', 'new'|'duplicate', run deadline ms}, or nil and an error reply
-- (E_NO_JOB, E_STALE_ATTEMPT).
local function record_accept(job_id, node_id, attempt)
  local job, e = fenced_job(job_id, node_id, attempt, {'state', 'node', 'attempt', 'run_ms'})
  if e then return nil, e end
  if job.state == 'running' then
    return {'running', 'duplicate', tonumber(redis.call('ZSCORE', K.deadlines(), job_id) or 0)}
  end
  local now = now_ms()
  local deadline = now + tonumber(job.run_ms)
  redis.call('HSET', K.job(job_id), 't_acc', int_s(now), 'state', 'running')
  count_state(job_id, job.state, 'running', job.attempt, job.node)
  redis.call('ZADD', K.deadlines(), int_s(deadline), job_id)
  return {'running', 'new', deadline}
end
