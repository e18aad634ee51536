-- job_accept: the node accepted attempt n of a job; the run deadline starts.
--   Fenced by node and attempt. A repeated accept of the running attempt is a no-op.
-- KEYS[1] job hash                  K.job(job_id)
-- KEYS[2] deadlines                 K.deadlines()
-- derived: counts
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- returns {{'running', 'new'|'duplicate', run deadline ms}, {}}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id = ARGV[2]
local job, e = fenced_job(job_id, ARGV[3], ARGV[4], {'state', 'node', 'attempt', 'run_ms'})
if e then return e end
if job.state == 'running' then
  return {{'running', 'duplicate', tonumber(redis.call('ZSCORE', KEYS[2], job_id) or 0)}, {}}
end
local now = now_ms()
local deadline = now + tonumber(job.run_ms)
redis.call('HSET', KEYS[1], 't_acc', int_s(now), 'state', 'running')
count_state(job_id, job.state, 'running', job.attempt, job.node)
redis.call('ZADD', KEYS[2], int_s(deadline), job_id)
return {{'running', 'new', deadline}, LOCAL, EVENTS}
