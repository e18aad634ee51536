-- job_reject: the node refused attempt n of a job.
--   Fenced by node and attempt. The node's slot is freed and the node is excluded for this job;
--   the job goes to another node at once, to the queue, or fails at max_attempts. The node is
--   then offered other queued work.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: node hashes/jobs, pools, pools index and its charges, heartbeat loads, queues,
--          deadlines, tried set, counts, gc, inboxes
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- ARGV[5] reason
-- returns {{new state}, deliveries}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id, node_id = ARGV[2], ARGV[3]
local job, e = fenced_job(job_id, node_id, ARGV[4])
if e then return e end
local now = now_ms()
retry(job_id, job, 'rejected by ' .. node_id .. ': ' .. ARGV[5], now, 'rejected')
feed_node(node_id, now)
return {{job.state}, LOCAL, EVENTS}
