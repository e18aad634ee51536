-- job_result: the node finished attempt n; the job ends done (ok) or failed (not ok).
--   Fenced by node and attempt. A second result for the attempt that already finished the job
--   is a reported no-op. The slot is freed and the node is handed the next queued job of its
--   pools in the same script; the client's instance gets exactly one done. A stage of a
--   pipeline hands its end to its pipeline instead (stages.lua stage_ended): stage_done, and
--   the next stage(s) created and placed in this same call.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: node hash/jobs, pools, pools index and its charges, queues, deadlines, counts, gc,
--          session, inboxes
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- ARGV[5] '1' ok, '0' failed
-- ARGV[6] output, raw JSON
-- ARGV[7] error, raw JSON ({code, message}) or 'null'
-- ARGV[8] '1': the node's accept of this attempt came with the result and was not sent on its
--         own; the job passes through running as job_accept would have made it (its counts,
--         its event, t_acc), and a finished attempt is an error as job_accept's would be.
--         '' or absent: no accept implied.
-- ARGV[9] '1': the failure is retryable (ignored when ok); with attempts left the node is
--         excluded and the job waits its backoff as a delayed job, else it ends failed
-- ARGV[10] random draw in [0, 1) for the backoff's jitter (lib.lua backoff_ms)
-- ARGV[11] the result's attachments, a JSON array of {name, size, media_type}, or '' (absent) for
--         none; kept in the job hash (out_att; their size is added to att_bytes), carried by done
-- ARGV[12..] the bytes of each attachment, in that order: kept in job_blobs as 'out:<name>'
-- returns {{state ('delayed' when retried later), 'new'|'duplicate'}, deliveries}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id, node_id, attempt = ARGV[2], ARGV[3], ARGV[4]
local accepted = ARGV[8] == '1'
-- what fencing, releasing and finishing read (not the payload, which may be large)
local job = hmget(KEYS[1], {'state', 'node', 'attempt', 'client', 'pools', 'retain_ms', 't_sub',
  't_asg', 't_acc', 'principal', 'trace', 'max_attempts', 'backoff', 'pipe', 'stage',
  'session', 'oseq'})
if job and TERMINAL[job.state] and job.node == node_id and job.attempt == attempt
    and not accepted then
  return {{job.state, 'duplicate'}, {}}
end
local e
job, e = fence(job_id, node_id, attempt, job)
if e then return e end
local now = now_ms()
local _, node_now = release(job_id, job)
local ok = ARGV[5] == '1'
local fields = {ok = ok and '1' or '0', output = ARGV[6], error = ARGV[7]}
if ARGV[11] and ARGV[11] ~= '' then
  local blobs, size = {}, 0
  for i, spec in ipairs(cjson.decode(ARGV[11])) do
    local data = ARGV[11 + i]
    blobs[2 * i - 1], blobs[2 * i] = 'out:' .. spec.name, data
    size = size + #data
  end
  redis.call('HSET', K.job_blobs(job_id), unpack_list(blobs))
  redis.call('HINCRBY', KEYS[1], 'att_bytes', size)
  fields.out_att = ARGV[11]
end
if accepted and job.state ~= 'running' then
  -- job_accept's effects; its run deadline would be removed at once by finish
  count_state(job_id, job.state, 'running', job.attempt, job.node)
  job.state = 'running'
  fields.t_acc = now
end
if not ok and ARGV[9] == '1' and tonumber(job.attempt) < tonumber(job.max_attempts or '1') then
  local draw = tonumber(ARGV[10]) or 0
  if draw < 0 or draw >= 1 then draw = 0 end
  local ok_e, e_info = pcall(cjson.decode, ARGV[7])
  local why = ok_e and type(e_info) == 'table' and e_info.message or ''
  retry_later(job_id, job, node_id, 'retryable failure on node ' .. node_id .. ': '
    .. tostring(why), now, draw)
  feed_node(node_id, now, node_now)
  return {{job.state, 'new'}, LOCAL, EVENTS}
end
finish(job_id, job, ok and 'done' or 'failed', fields, now)
-- a stage's next stage may have taken a slot of this node since it was released
feed_node(node_id, now, not job.pipe and node_now or nil)
return {{job.state, 'new'}, LOCAL, EVENTS}
