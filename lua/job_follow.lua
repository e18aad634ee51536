-- job_follow: route a job's progress and done to the caller's instance from now on.
--   Used by a client that reconnected (possibly to another instance) to follow its jobs. An
--   unfinished job's move is counted (lib.lua move_client) and the instance that had its
--   deliveries, if another, gets a detach.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: the previous client instance's inbox
-- ARGV[1] caller instance
-- ARGV[2] principal asking, or '' (an operator)
-- ARGV[3] job id
-- returns {{state, attempt, done message JSON or '', follows}, deliveries}
-- errors  E_NO_JOB, E_NOT_YOURS
CALLER = ARGV[1]
local job_id = ARGV[3]
local job = hgetall(KEYS[1])
if not job then return err('E_NO_JOB', 'job ' .. job_id .. ' does not exist') end
if ARGV[2] ~= '' and job.principal ~= ARGV[2] then
  return err('E_NOT_YOURS', 'job ' .. job_id .. ' belongs to another client')
end
if TERMINAL[job.state] then
  redis.call('HSET', KEYS[1], 'client', CALLER)
  return {{job.state, tonumber(job.attempt), done_message(job_id, job), 0}, {}}
end
local follows = move_client(job_id, KEYS[1], job)
return {{job.state, tonumber(job.attempt), '', follows}, LOCAL}
