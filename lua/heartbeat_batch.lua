-- heartbeat_batch: the heartbeats an instance sends for one flush window, in one call.
--   Refreshes each sent node's liveness, its last-heartbeat time, load and in-flight count, and
--   the instance's own presence. The instance sends a node's beat when its load or in-flight
--   count changed, and otherwise every [nodes] liveness_refresh beats (heartbeats.py): the
--   liveness it writes reaches that much further. A node the instance found silent (no beat
--   for the liveness ttl) has its liveness end now, so the next reap takes it offline.
--   A beat or silence from a connection that no longer speaks for the node (owner or epoch
--   changed, node offline or unknown) changes nothing; a stale beat's node id is returned so
--   the instance can tell that connection to register again.
--   Redis runs nothing else while this runs, so no command is issued per node: per 500 nodes one
--   HMGET of the fencing index (K.fence(): '<epoch> <owner>' of every node not offline), one
--   ZADD of liveness and one HSET of '<ms> <load> <inflight>' into K.beats().
-- KEYS[1] liveness                  K.alive()
-- KEYS[2] instance presence         K.instances()
-- derived: K.fence(), K.beats()
-- ARGV[1] caller instance
-- ARGV[2] ms a beat keeps its node alive
-- ARGV[3] instance presence ttl ms
-- ARGV[4] count S of silent nodes
-- ARGV[5 .. 4+2S] pairs: silent node id, the epoch its last beat spoke for
-- ARGV[5+2S ..] groups of four: node id, epoch, load, inflight
-- returns {{stale node ids...}, {}}
-- errors  E_BAD_ARG (no silent count, or arguments not in pairs then groups of four)
CALLER = ARGV[1]
local silent = tonumber(ARGV[4] or '')
if not silent or silent < 0 or silent % 1 ~= 0 or 4 + 2 * silent > #ARGV then
  return err('E_BAD_ARG', 'ARGV[4] must count the silent nodes that follow it')
end
local beats_from = 5 + 2 * silent
if (#ARGV - beats_from + 1) % 4 ~= 0 then
  return err('E_BAD_ARG', 'heartbeats come in groups of four')
end
local CHUNK = 500 -- nodes per command: far below what Lua can unpack at once
local now = now_ms()
local now_s = int_s(now)
local expiry = int_s(now + tonumber(ARGV[2]))
local fence_key, beats_key = K.fence(), K.beats()
local owner = ' ' .. CALLER

-- The fences of the nodes named at ARGV[first], ARGV[first + step], ... up to ARGV[stop].
local function fences_of(first, stop, step)
  local ids = {}
  for i = first, stop, step do ids[#ids + 1] = ARGV[i] end
  return redis.call('HMGET', fence_key, unpack_list(ids))
end

-- Silent nodes: liveness ends now where it still exists (XX: an offline node stays out).
local first = 5
while first < beats_from do
  local stop = math.min(first + 2 * CHUNK - 1, beats_from - 1)
  local fences, ended, j = fences_of(first, stop, 2), {}, 0
  for i = first, stop, 2 do
    j = j + 1
    if fences[j] == ARGV[i + 1] .. owner then
      ended[#ended + 1], ended[#ended + 2] = now_s, ARGV[i]
    end
  end
  if #ended > 0 then redis.call('ZADD', KEYS[1], 'XX', unpack_list(ended)) end
  first = stop + 1
end

local stale = {}
first = beats_from
while first <= #ARGV do
  local stop = math.min(first + 4 * CHUNK - 1, #ARGV)
  local fences = fences_of(first, stop, 4)
  local alive, beats, n, j = {}, {}, 0, 0
  for i = first, stop, 4 do
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
  first = stop + 1
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), CALLER)
return {stale, {}}
