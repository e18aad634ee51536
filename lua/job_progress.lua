-- job_progress: forward a node's progress report to the client's instance.
--   Fenced by node and attempt; the report is not stored. Progress of a running attempt
--   extends its run deadline to run_ms from now, but not past t_acc + ARGV[6], and never
--   brings it nearer (as a worker's progress extends its job's lock).
-- KEYS[1] job hash                  K.job(job_id)
-- KEYS[2] deadlines                 K.deadlines()
-- derived: client instance's inbox; a stage's pipeline hash
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- ARGV[5] progress data, raw JSON
-- ARGV[6] max run ms: how long after its accept progress may keep an attempt running
-- returns {{state}, deliveries}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id = ARGV[2]
local job, e = fenced_job(job_id, ARGV[3], ARGV[4],
  {'state', 'node', 'attempt', 'client', 'principal', 'run_ms', 't_acc', 'pipe', 'stage'})
if e then return e end
if job.state == 'running' then
  local run_ms, t_acc = tonumber(job.run_ms), tonumber(job.t_acc)
  if run_ms and t_acc then
    local deadline = math.min(now_ms() + run_ms, t_acc + tonumber(ARGV[6]))
    if deadline > tonumber(redis.call('ZSCORE', KEYS[2], job_id) or deadline) then
      redis.call('ZADD', KEYS[2], 'XX', int_s(deadline), job_id)
    end
  end
end
if job.pipe then -- a stage's progress goes to its pipeline's client, naming the stage
  local pipe = redis.call('HMGET', K.job(job.pipe), 'client', 'principal')
  deliver(pipe[1], '["progress",' .. cjson.encode(job.pipe) .. ',' .. job.attempt .. ','
    .. cjson.encode(ARGV[5]) .. ',' .. cjson.encode(pipe[2] or '') .. ','
    .. cjson.encode(job.stage or '') .. ']')
  return {{job.state}, LOCAL, EVENTS}
end
-- {'progress', job, attempt, progress JSON text, principal[, stage]}, built as text (lib.lua
-- count_state)
deliver(job.client, '["progress",' .. cjson.encode(job_id) .. ',' .. job.attempt .. ','
  .. cjson.encode(ARGV[5]) .. ',' .. cjson.encode(job.principal or '') .. ']')
return {{job.state}, LOCAL, EVENTS}
