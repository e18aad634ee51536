-- heartbeat_batch: every heartbeat an instance received in one flush window, in one call.
--   Refreshes each node's liveness, its last-heartbeat time, load and in-flight count, and the
--   instance's own presence. A heartbeat from a connection that no longer speaks for the node
--   (owner or epoch changed, node offline or unknown) refreshes nothing; the node id is returned
--   as stale so the instance can tell that connection to register again.
--   Redis runs nothing else while this runs, so no command is issued per node: per 500 nodes one
--   HMGET of the fencing index (K.fence(): '<epoch> <owner>' of every node not offline), one
--   ZADD of liveness and one HSET of '<ms> <load> <inflight>' into K.beats().
-- KEYS[1] liveness                  K.alive()
-- KEYS[2] instance presence         K.instances()
-- derived: K.fence(), K.beats()
-- ARGV[1] caller instance
-- ARGV[2] node liveness ttl ms
-- ARGV[3] instance presence ttl ms
-- ARGV[4..] groups of four: node id, epoch, load, inflight
-- returns {{stale node ids...}, {}}
-- errors  E_BAD_ARG (ARGV not in groups of four)
CALLER = ARGV[1]
if (#ARGV - 3) % 4 ~= 0 then return err('E_BAD_ARG', 'heartbeats come in groups of four') end
local CHUNK = 500 -- nodes per command: far below what Lua can unpack at once
local now = now_ms()
local now_s = int_s(now)
local expiry = int_s(now + tonumber(ARGV[2]))
local fence_key, beats_key = K.fence(), K.beats()
local owner = ' ' .. CALLER
local stale = {}
local first = 4
while first <= #ARGV do
  local last = math.min(first + 4 * CHUNK - 1, #ARGV)
  local ids = {}
  for i = first, last, 4 do ids[#ids + 1] = ARGV[i] end
  local fences = redis.call('HMGET', fence_key, unpack_list(ids))
  local alive, beats, n, j = {}, {}, 0, 0
  for i = first, last, 4 do
    j = j + 1
    if fences[j] == ARGV[i + 1] .. owner then
      alive[n + 1], alive[n + 2] = expiry, ARGV[i]
      beats[n + 1], beats[n + 2] = ARGV[i], now_s .. ' ' .. ARGV[i + 2] .. ' ' .. ARGV[i + 3]
      n = n + 2
    else
      stale[#stale + 1] = ARGV[i]
    end
  end
  if n > 0 then
    redis.call('ZADD', KEYS[1], unpack_list(alive))
    redis.call('HSET', beats_key, unpack_list(beats))
  end
  first = last + 1
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), CALLER)
return {stale, {}}
