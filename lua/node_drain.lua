-- node_drain: stop giving a node new jobs; the jobs it runs finish normally.
--   The node leaves every pool (so selection cannot see it) and its owner instance is told to
--   send it `drain`. A later registration brings it back online.
-- KEYS[1] node hash                 K.node(node_id)
-- derived: pool and pool-index zsets, pools index charges, owner's inbox
-- ARGV[1] caller instance
-- ARGV[2] node id
-- ARGV[3] epoch the caller speaks for, or '' (an operator: any epoch)
-- ARGV[4] reason
-- returns {{state, jobs still held, '1' when this call drained it | '0' (already draining)},
--          deliveries}
-- errors  E_NO_NODE, E_STALE_EPOCH, E_BAD_STATE (node is offline)
CALLER = ARGV[1]
local node_id = ARGV[2]
local node = hgetall(KEYS[1])
if not node then return err('E_NO_NODE', 'node ' .. node_id .. ' is not registered') end
if ARGV[3] ~= '' and node.epoch ~= ARGV[3] then
  return err('E_STALE_EPOCH', 'node ' .. node_id .. ' epoch ' .. ARGV[3] .. ' is not current (' .. node.epoch .. ')')
end
if node.state == 'offline' then return err('E_BAD_STATE', 'node ' .. node_id .. ' is offline') end
if node.state == 'online' then
  for _, p in ipairs(node_pools(node)) do pool_leave(p, node_id) end
  redis.call('HSET', KEYS[1], 'state', 'draining', 'reason', ARGV[4])
  deliver(node.owner, {'drain', node_id, ARGV[4]})
end
return {{'draining', redis.call('SCARD', K.node_jobs(node_id)),
  node.state == 'online' and '1' or '0'}, LOCAL, EVENTS}
