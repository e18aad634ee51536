-- heartbeat_batch: every heartbeat an instance received in one flush window, in one call.
--   Refreshes each node's liveness, its last-heartbeat time, load and in-flight count, and the
--   instance's own presence. A heartbeat from a connection that no longer speaks for the node
--   (owner or epoch changed, node offline or unknown) refreshes nothing; the node id is returned
--   as stale so the instance can tell that connection to register again.
--   Redis runs nothing else while this runs, so the per-node work is one read: liveness and
--   heartbeat times are written for the whole batch with one ZADD and one HSET per chunk, and a
--   node's hash is written only when its load or in-flight count changed.
-- KEYS[1] liveness                  K.alive()
-- KEYS[2] instance presence         K.instances()
-- derived: node hashes, K.beats()
-- ARGV[1] caller instance
-- ARGV[2] node liveness ttl ms
-- ARGV[3] instance presence ttl ms
-- ARGV[4..] groups of four: node id, epoch, load, inflight
-- returns {{stale node ids...}, {}}
-- errors  E_BAD_ARG (ARGV not in groups of four)
CALLER = ARGV[1]
if (#ARGV - 3) % 4 ~= 0 then return err('E_BAD_ARG', 'heartbeats come in groups of four') end
local CHUNK = 1000 -- arguments per write: far below what Lua can unpack at once
local now = now_ms()
local now_s = int_s(now)
local expiry = int_s(now + tonumber(ARGV[2]))
local stale = {}
local alive, beats = {}, {}
local function flush()
  redis.call('ZADD', KEYS[1], unpack_list(alive))
  redis.call('HSET', K.beats(), unpack_list(beats))
  alive, beats = {}, {}
end
for i = 4, #ARGV, 4 do
  local node_id = ARGV[i]
  local nkey = K.node(node_id)
  local vals = redis.call('HMGET', nkey, 'owner', 'epoch', 'state', 'load', 'inflight')
  if vals[1] == CALLER and vals[2] == ARGV[i + 1] and vals[3] and vals[3] ~= 'offline' then
    local n = #alive
    alive[n + 1], alive[n + 2] = expiry, node_id
    beats[n + 1], beats[n + 2] = node_id, now_s
    if n + 2 >= CHUNK then flush() end
    if vals[4] ~= ARGV[i + 2] or vals[5] ~= ARGV[i + 3] then
      redis.call('HSET', nkey, 'load', ARGV[i + 2], 'inflight', ARGV[i + 3])
    end
  else
    stale[#stale + 1] = node_id
  end
end
if #alive > 0 then flush() end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), CALLER)
return {stale, {}}
