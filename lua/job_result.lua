-- job_result: the node finished attempt n; the job ends done (ok) or failed (not ok).
--   Fenced by node and attempt. A second result for the attempt that already finished the job
--   is a reported no-op. The slot is freed and the node is handed the next queued job of its
--   pools in the same script; the client's instance gets exactly one done.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: node hash/jobs, pools, queues, deadlines, counts, gc, session, inboxes
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- ARGV[5] '1' ok, '0' failed
-- ARGV[6] output, raw JSON
-- ARGV[7] error, raw JSON ({code, message}) or 'null'
-- returns {{state, 'new'|'duplicate'}, deliveries}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id, node_id, attempt = ARGV[2], ARGV[3], ARGV[4]
-- what fencing, releasing and finishing read (not the payload, which may be large)
local job = hmget(KEYS[1], {'state', 'node', 'attempt', 'client', 'pools', 'retain_ms', 't_sub',
  't_asg', 't_acc'})
if job and TERMINAL[job.state] and job.node == node_id and job.attempt == attempt then
  return {{job.state, 'duplicate'}, {}}
end
local e
job, e = fence(job_id, node_id, attempt, job)
if e then return e end
local now = now_ms()
local _, node_now = release(job_id, job)
local ok = ARGV[5] == '1'
finish(job_id, job, ok and 'done' or 'failed',
  {ok = ok and '1' or '0', output = ARGV[6], error = ARGV[7]}, now)
feed_node(node_id, now, node_now)
return {{job.state, 'new'}, LOCAL, EVENTS}
