-- node_register: register or re-register a node and hand it queued work.
--   The epoch increases on every registration (a namespace-wide counter, so it never repeats even
--   after the node's record was collected). Pools change atomically: the node leaves pools it no
--   longer serves and joins the new ones with its free slots. Jobs the node still holds from an
--   earlier connection stay assigned to it (resume after reconnect). Any queued job of its pools
--   that fits is assigned in the same script. Coming back with fewer slots than the jobs it
--   holds take (their costs) gives the excess back: those jobs are cancelled on the node and retried elsewhere.
--   A node id belongs to the principal that registered it while its record exists (online, and
--   for its retention after going offline, until the reaper collects it): another principal is
--   refused. A record without a principal (written by an older version) is taken over.
-- KEYS[1] node hash                 K.node(node_id)
-- KEYS[2] nodes index               K.nodes()
-- KEYS[3] liveness                  K.alive()
-- derived: node jobs set, pool and pool-index zsets, queues, gc, counts, job hashes, inboxes,
--          owned-node indexes (the caller's and the previous owner's), fencing index,
--          heartbeat times and loads, pools index charges
-- ARGV[1] caller instance (becomes the node's owner)
-- ARGV[2] node id
-- ARGV[3] capacity (slots, >= 1)
-- ARGV[4] pool keys, JSON array of strings
-- ARGV[5] capabilities, raw JSON object
-- ARGV[6] labels, raw JSON object
-- ARGV[7] liveness ttl ms
-- ARGV[8] principal registering the node (non-empty)
-- ARGV[9] protocol version the node's connection spoke (its hello's; 0 unknown), the node's proto
-- returns {{epoch, used}, deliveries}
-- errors  E_BAD_ARG (capacity < 1, pools not an array of strings, empty principal),
--         E_IDENTITY (the node id belongs to another principal)
CALLER = ARGV[1]
local node_id = ARGV[2]
local capacity = tonumber(ARGV[3])
if not capacity or capacity < 1 then return err('E_BAD_ARG', 'capacity must be >= 1') end
local ok, pools = pcall(cjson.decode, ARGV[4])
if not ok or type(pools) ~= 'table' then return err('E_BAD_ARG', 'pools must be a JSON array') end
for _, p in ipairs(pools) do
  if type(p) ~= 'string' or p == '' then return err('E_BAD_ARG', 'pool keys must be non-empty strings') end
end
local principal = ARGV[8]
if not principal or principal == '' then return err('E_BAD_ARG', 'principal must be non-empty') end
local proto = tonumber(ARGV[9] or '0')
if not proto or proto < 0 or proto % 1 ~= 0 then
  return err('E_BAD_ARG', 'protocol version must be an integer >= 0')
end
local now = now_ms()
local nkey = KEYS[1]
local old = hgetall(nkey)
if old and old.principal and old.principal ~= '' and old.principal ~= principal then
  return err('E_IDENTITY', 'node ' .. node_id .. ' is registered by another principal')
end
local epoch = redis.call('HINCRBY', K.counts(), 'epoch', '1')

-- leave the pools the node no longer serves
local keep = {}
for _, p in ipairs(pools) do keep[p] = true end
if old then
  for _, p in ipairs(node_pools(old)) do
    if not keep[p] then pool_leave(p, node_id) end
  end
end

-- A node that comes back with fewer slots than the jobs it still holds take gives the excess
-- back (assigned-but-not-accepted ones first): they are cancelled on the node and placed
-- elsewhere.
local held = redis.call('SMEMBERS', K.node_jobs(node_id))
local held_slots = held_cost(node_id)
if held_slots > capacity then
  local order = {}
  for _, job_id in ipairs(held) do
    local job = hgetall(K.job(job_id))
    order[#order + 1] = {job_id, job, (job.state == 'assigned') and 0 or 1, tonumber(job.t_asg) or 0}
  end
  table.sort(order, function(x, y)
    if x[3] ~= y[3] then return x[3] < y[3] end
    if x[4] ~= y[4] then return x[4] > y[4] end
    return x[1] < y[1]
  end)
  for i = 1, #order do
    if held_slots <= capacity then break end
    local job_id, job = order[i][1], order[i][2]
    held_slots = held_slots - job_cost(job_id, job)
    deliver(CALLER, {'cancel', node_id, job_id, tonumber(job.attempt), 'node capacity reduced'})
    retry(job_id, job, 'capacity of node ' .. node_id .. ' reduced', now)
  end
end
local used = held_cost(node_id)
redis.call('HSET', nkey, 'id', node_id, 'epoch', epoch, 'owner', CALLER, 'capacity', capacity,
  'used', used, 'state', 'online', 'pools', cjson.encode(pools), 'caps', ARGV[5],
  'labels', ARGV[6], 't_reg', now, 'reason', '', 'principal', principal, 'proto', int_s(proto))
local free = capacity - used
if free < 0 then free = 0 end
for _, p in ipairs(pools) do pool_join(p, node_id, free, int_s(capacity)) end
redis.call('ZADD', KEYS[2], now, node_id)
redis.call('HSET', K.fence(), node_id, int_s(epoch) .. ' ' .. CALLER)
redis.call('HSET', K.beats(), node_id, int_s(now) .. ' 0 ' .. int_s(used))
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), node_id)
-- the owner's index of its nodes (reconciliation finds an owned node with no connection by it)
if old and old.owner and old.owner ~= '' and old.owner ~= CALLER then
  redis.call('SREM', K.owned(old.owner), node_id)
end
redis.call('SADD', K.owned(CALLER), node_id)
redis.call('ZREM', K.gc(), 'n:' .. node_id)

feed_node(node_id, now)
return {{epoch, tonumber(redis.call('HGET', nkey, 'used'))}, LOCAL, EVENTS}
