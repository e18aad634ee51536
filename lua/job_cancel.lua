-- job_cancel: cancel a job in any non-terminal state.
--   A queued job leaves its queues; an assigned or running job frees its slot and its node's
--   owner is told to send `cancel` (the node is then offered queued work). The client's
--   instance gets done with state canceled. Cancelling a finished job is a no-op: nothing
--   changes and nothing is delivered. A pipeline is canceled with every stage it runs
--   (stages.lua pipeline_close).
-- KEYS[1] job hash                  K.job(job_id)
-- derived: node hash/jobs, pools, pools index and its charges, queues, deadlines, counts, gc,
--          inboxes
-- ARGV[1] caller instance
-- ARGV[2] principal asking, or '' (an operator)
-- ARGV[3] job id
-- ARGV[4] reason
-- returns {{'canceled' | the terminal state the job already had, '1' when this call cancelled
--          it | '0'}, deliveries}
-- errors  E_NO_JOB, E_NOT_YOURS
CALLER = ARGV[1]
local job_id = ARGV[3]
local job = hgetall(KEYS[1])
if not job then return err('E_NO_JOB', 'job ' .. job_id .. ' does not exist') end
if ARGV[2] ~= '' and job.principal ~= ARGV[2] then
  return err('E_NOT_YOURS', 'job ' .. job_id .. ' belongs to another client')
end
if TERMINAL[job.state] then return {{job.state, '0'}, {}} end
local now = now_ms()
if job.kind == 'pipeline' then -- its running stages are canceled with it
  pipeline_close(job_id, job, 'canceled', cjson.encode({code = 'E_CANCELED', message = ARGV[4]}),
    ARGV[4], now)
  return {{'canceled', '1'}, LOCAL, EVENTS}
end
local node_id = release(job_id, job)
if node_id and node_id ~= '' then
  local owner = redis.call('HGET', K.node(node_id), 'owner')
  deliver(owner, {'cancel', node_id, job_id, tonumber(job.attempt), ARGV[4]})
end
finish(job_id, job, 'canceled', {ok = 0, error = cjson.encode({code = 'E_CANCELED',
  message = ARGV[4]})}, now)
if node_id and node_id ~= '' then feed_node(node_id, now) end
return {{'canceled', '1'}, LOCAL, EVENTS}
