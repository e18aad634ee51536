-- node_offline: a node's connection is gone; take the node out of service.
--   Fenced by owner instance and epoch: a stale connection (the node has registered again since,
--   here or on another instance) can never remove the newer registration. The node leaves its
--   pools and liveness; each job it held is retried on another node at once, queued, or failed
--   at max_attempts. The record is kept for `retain ms` for queries, then collected.
-- KEYS[1] node hash                 K.node(node_id)
-- derived: node jobs/unavail keys, mark expiry index, pools, pools index and its charges,
--          liveness, heartbeat loads, job hashes and tried sets, queues, deadlines, gc, counts,
--          inboxes
-- ARGV[1] caller instance
-- ARGV[2] node id
-- ARGV[3] owner instance the caller speaks for
-- ARGV[4] epoch the caller speaks for
-- ARGV[5] reason
-- ARGV[6] retain ms for the offline record
-- returns {{jobs moved on}, deliveries}; {{-1}, {}} if the node was already offline
-- errors  E_NO_NODE, E_WRONG_OWNER, E_STALE_EPOCH
CALLER = ARGV[1]
local node_id = ARGV[2]
local node = hgetall(KEYS[1])
if not node then return err('E_NO_NODE', 'node ' .. node_id .. ' is not registered') end
if node.owner ~= ARGV[3] then
  return err('E_WRONG_OWNER', 'node ' .. node_id .. ' is owned by ' .. node.owner .. ', not ' .. ARGV[3])
end
if node.epoch ~= ARGV[4] then
  return err('E_STALE_EPOCH', 'node ' .. node_id .. ' epoch ' .. ARGV[4] .. ' is not current (' .. node.epoch .. ')')
end
if node.state == 'offline' then return {{-1}, {}} end
local now = now_ms()
local moved = node_down(node_id, node, ARGV[5], now, tonumber(ARGV[6]))
return {{moved}, LOCAL, EVENTS}
