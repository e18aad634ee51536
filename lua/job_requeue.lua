-- job_requeue: an operator puts a finished job back to work with a fresh attempt budget.
--   A failed, canceled or timed-out job is placed as a new submit would be (a free slot of an
--   eligible node of its pools, else its queues), with its result, error and timings of the
--   end cleared, the nodes that failed it forgiven, its retention stopped, and as many attempts
--   again as it was given at submit (attempt numbers keep counting up, so a message about an
--   earlier attempt stays fenced out). A job that is queued, assigned or running is left as it
--   is (a reported no-op); a job that ended done is refused: it succeeded. Its deliveries go to
--   the caller's instance from now on (the instance of its first client may be long gone): a
--   client gets the new done by following the job (job_follow moves them to its instance).
-- KEYS[1] job hash                  K.job(job_id)
-- derived: tried set, pools, pools index and its charges, liveness, heartbeat loads, node
--          hashes/jobs/unavail, queues, deadlines, session, gc, counts, exclusions, inboxes,
--          browsing indices (the job's state index; the node index of each node it ran on),
--          the principal's retained finished jobs and their bytes
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] reason (kept in the job's 'reason')
-- ARGV[4] max queued jobs in the namespace
-- returns {{'requeued' | 'unchanged', state, attempt}, deliveries}
-- errors  E_NO_JOB, E_BAD_STATE (the job ended done, or is a pipeline), E_QUEUE_FULL
CALLER = ARGV[1]
local job_id = ARGV[2]
local jkey = KEYS[1]
local job = hgetall(jkey)
if not job then return err('E_NO_JOB', 'job ' .. job_id .. ' does not exist') end
if not TERMINAL[job.state] then return {{'unchanged', job.state, tonumber(job.attempt)}, {}} end
if job.kind == 'pipeline' then
  return err('E_BAD_STATE', 'job ' .. job_id .. ' is a pipeline; its stages ran as jobs of their'
    .. ' own: submit the pipeline again under a new job id')
end
if job.state == 'done' then
  return err('E_BAD_STATE', 'job ' .. job_id .. ' ended done; only a job that failed, was '
    .. 'canceled or timed out is requeued')
end
local now = now_ms()
local attempt = tonumber(job.attempt) or 0
local target = principal_can_run(job.principal, 1) and select_node(job_id,
  cjson.decode(job.pools), job_services(job), job.session or '', now, true,
  (tonumber(job.seq) or 0) + attempt, job_cost(job_id, job), job.principal or '')
if not target then
  local queued = tonumber(redis.call('HGET', K.counts(), 'queued') or '0')
  if queued >= tonumber(ARGV[4]) then
    return err('E_QUEUE_FULL', 'queue is full (' .. queued .. ' jobs waiting)')
  end
end
-- the attempts given at submit: kept in 'budget' from the first requeue on
local budget = job.budget or job.max_attempts
local max_s = int_s(attempt + tonumber(budget))
redis.call('ZREM', K.gc(), 'j:' .. job_id)
-- the nodes that failed it are forgiven: the browsing index of each forgets the job with them
-- (removal at retention finds a job's nodes in its tried set and its last node only)
for _, node_id in ipairs(redis.call('SMEMBERS', K.job_tried(job_id))) do
  redis.call('ZREM', K.jobs_on(node_id), job_id)
end
if job.node and job.node ~= '' then redis.call('ZREM', K.jobs_on(job.node), job_id) end
redis.call('DEL', K.job_tried(job_id))
index_reopen(job_id, job)
retained_forget(job_id, job)
redis.call('HDEL', jkey, 'ok', 'output', 'error', 't_fin', 't_acc', 'rbytes')
redis.call('HSET', jkey, 'max_attempts', max_s, 'budget', budget, 'reason', ARGV[3], 'client',
  CALLER)
job.max_attempts, job.ok, job.output, job.error, job.t_fin, job.t_acc = max_s, nil, nil, nil,
  nil, nil
job.client = CALLER
if target then
  assign(job_id, job, target, now)
else
  enqueue(job_id, job, now)
end
return {{'requeued', job.state, tonumber(job.attempt)}, LOCAL, EVENTS}
