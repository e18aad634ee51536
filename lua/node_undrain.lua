-- node_undrain: an operator lifts a drain; the node takes new jobs again.
--   A draining node goes back online and into each of its pools with its free slots, its
--   owner instance is told to send it `undrain` (the lifted drain: {'drain', node, reason, 1}),
--   and it is handed the queued jobs of its pools it can take. An online node is left as it is
--   (a reported no-op). Epochs are not fenced: an operator speaks for whichever registration
--   is current.
-- KEYS[1] node hash                 K.node(node_id)
-- derived: pool and pool-index zsets, pools index charges, liveness, queues, job hashes,
--          deadlines, counts, owner's inbox
-- ARGV[1] caller instance
-- ARGV[2] node id
-- ARGV[3] reason
-- returns {{'online', '1' when this call lifted a drain | '0' (already online)}, deliveries}
-- errors  E_NO_NODE, E_BAD_STATE (node is offline)
CALLER = ARGV[1]
local node_id = ARGV[2]
local node = hgetall(KEYS[1])
if not node then return err('E_NO_NODE', 'node ' .. node_id .. ' is not registered') end
if node.state == 'offline' then return err('E_BAD_STATE', 'node ' .. node_id .. ' is offline') end
if node.state == 'online' then return {{'online', '0'}, {}} end
local free = tonumber(node.capacity) - tonumber(node.used)
if free < 0 then free = 0 end
for _, p in ipairs(node_pools(node)) do pool_join(p, node_id, int_s(free), node.capacity) end
redis.call('HSET', KEYS[1], 'state', 'online', 'reason', '')
deliver(node.owner, {'drain', node_id, ARGV[3], 1})
feed_node(node_id, now_ms())
return {{'online', '1'}, LOCAL, EVENTS}
