-- job_follow: route a job's progress and done to the caller's instance from now on.
--   Used by a client that reconnected (possibly to another instance) to follow its jobs. An
--   unfinished job's move is counted (lib.lua move_client) and the instance that had its
--   deliveries, if another, gets a detach.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: the previous client instance's inbox
-- ARGV[1] caller instance
-- ARGV[2] principal asking, or '' (an operator)
-- ARGV[3] job id
-- returns {{state, attempt, done message JSON or '', follows}, deliveries}; a finished job of
--          an ordered session carries its done only once the session delivered or skipped its
--          seq (the session's follower gets it in its turn)
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
  local done = done_message(job_id, job)
  if job.oseq and job.oseq ~= '' then -- a done its ordered session still holds comes in its turn
    local nxt = redis.call('HGET', K.order(order_id(job.principal, job.session)), 'next')
    if nxt and tonumber(job.oseq) >= tonumber(nxt) then done = '' end
  end
  return {{job.state, tonumber(job.attempt), done, 0}, {}}
end
local follows = move_client(job_id, KEYS[1], job)
return {{job.state, tonumber(job.attempt), '', follows}, LOCAL}
