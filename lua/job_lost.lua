-- job_lost: a node the calling instance holds does not run a job the store gives it.
--   Found by reconciliation: the node's last two heartbeats, both sent after the attempt was
--   assigned, do not list the job, or the node lists it but its job set lost the entry. Fenced
--   by the node's owner and epoch, and by the job's node and attempt. The node is told to cancel
--   the attempt (in case it runs it after all), the slot is freed and the job moves to its next
--   attempt as if the node were lost: another node at once, the queue, or failed at
--   max_attempts. A job the node's set names but the store does not place on the node (record
--   gone, finished, or on another node) only leaves the set. Either way the node's used slots
--   are set to the costs of its job set again, and the node is offered queued work.
-- KEYS[1] job hash                  K.job(job_id)
-- KEYS[2] node hash                 K.node(node_id)
-- KEYS[3] node jobs set             K.node_jobs(node_id)
-- derived: pools, pools index and its charges, heartbeat loads, queues, deadlines, tried set,
--          counts, gc, finished list, other nodes, inboxes
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] node epoch the caller speaks for
-- ARGV[5] attempt the caller saw on the node
-- ARGV[6] reason
-- returns {{'requeued' | 'released' | 'none', job state ('' when no record)}, deliveries, events}
-- errors  E_NO_NODE, E_WRONG_OWNER, E_STALE_EPOCH, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id, node_id = ARGV[2], ARGV[3]
local node = redis.call('HMGET', KEYS[2], 'owner', 'epoch', 'state')
if not node[3] then return err('E_NO_NODE', 'node ' .. node_id .. ' is not registered') end
if node[1] ~= CALLER then
  return err('E_WRONG_OWNER', 'node ' .. node_id .. ' is owned by ' .. node[1] .. ', not ' .. CALLER)
end
if node[2] ~= ARGV[4] then
  return err('E_STALE_EPOCH', 'node ' .. node_id .. ' epoch ' .. ARGV[4] .. ' is not current (' .. node[2] .. ')')
end
local now = now_ms()
-- The node's used slots follow its job set again (a set that lost an entry left them high):
-- the sum of its jobs' costs.
local function resync()
  local drift = held_cost(node_id) - (tonumber(redis.call('HGET', KEYS[2], 'used')) or 0)
  if drift ~= 0 then node_slots(node_id, drift) end
end
local job = hgetall(KEYS[1])
if not job or job.node ~= node_id or (job.state ~= 'assigned' and job.state ~= 'running') then
  local state = job and job.state or ''
  local removed = redis.call('SREM', KEYS[3], job_id)
  resync()
  feed_node(node_id, now)
  return {{removed == 1 and 'released' or 'none', state}, LOCAL, EVENTS}
end
if job.attempt ~= ARGV[5] then
  return err('E_STALE_ATTEMPT', 'job ' .. job_id .. ' attempt ' .. ARGV[5] .. ' on node ' ..
    node_id .. ' is not current (attempt ' .. job.attempt .. ')')
end
deliver(CALLER, {'cancel', node_id, job_id, tonumber(job.attempt), ARGV[6]})
retry(job_id, job, ARGV[6] .. ' on node ' .. node_id, now)
resync()
feed_node(node_id, now)
return {{'requeued', job.state}, LOCAL, EVENTS}
