-- heartbeat_batch: every heartbeat an instance received in one flush window, in one call.
--   Refreshes each node's liveness, load and in-flight count, and the instance's own presence.
--   A heartbeat from a connection that no longer speaks for the node (owner or epoch changed,
--   node offline or unknown) refreshes nothing; the node id is returned as stale so the instance
--   can tell that connection to register again.
-- KEYS[1] liveness                  K.alive()
-- KEYS[2] instance presence         K.instances()
-- derived: node hashes
-- ARGV[1] caller instance
-- ARGV[2] node liveness ttl ms
-- ARGV[3] instance presence ttl ms
-- ARGV[4..] groups of four: node id, epoch, load, inflight
-- returns {{stale node ids...}, {}}
-- errors  E_BAD_ARG (ARGV not in groups of four)
CALLER = ARGV[1]
if (#ARGV - 3) % 4 ~= 0 then return err('E_BAD_ARG', 'heartbeats come in groups of four') end
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
local stale = {}
for i = 4, #ARGV, 4 do
  local node_id = ARGV[i]
  local nkey = K.node(node_id)
  local vals = redis.call('HMGET', nkey, 'owner', 'epoch', 'state')
  if vals[1] == CALLER and vals[2] == ARGV[i + 1] and vals[3] and vals[3] ~= 'offline' then
    redis.call('ZADD', KEYS[1], expiry, node_id)
    redis.call('HSET', nkey, 't_hb', now, 'load', ARGV[i + 2], 'inflight', ARGV[i + 3])
  else
    stale[#stale + 1] = node_id
  end
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), CALLER)
return {stale, {}}
