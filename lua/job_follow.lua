-- job_follow: route a job's progress and done to the caller's instance from now on.
--   Used by a client that reconnected (possibly to another instance) to follow its jobs.
-- KEYS[1] job hash                  K.job(job_id)
-- ARGV[1] caller instance
-- ARGV[2] principal asking, or '' (an operator)
-- ARGV[3] job id
-- returns {{state, attempt, done message JSON or ''}, {}}
-- errors  E_NO_JOB, E_NOT_YOURS
CALLER = ARGV[1]
local job_id = ARGV[3]
local job = hgetall(KEYS[1])
if not job then return err('E_NO_JOB', 'job ' .. job_id .. ' does not exist') end
if ARGV[2] ~= '' and job.principal ~= ARGV[2] then
  return err('E_NOT_YOURS', 'job ' .. job_id .. ' belongs to another client')
end
redis.call('HSET', KEYS[1], 'client', CALLER)
local done = ''
if TERMINAL[job.state] then done = done_message(job_id, job) end
return {{job.state, tonumber(job.attempt), done}, {}}
