-- node_unavailable: a node reports that one of its services is unavailable for a while.
--   Until the mark expires, selection skips the node for jobs that need that service. The
--   node's entry in the expiry index moves to the mark's end when that is earlier, so the
--   reaper hands the node the queued jobs it can take then.
-- KEYS[1] node hash                 K.node(node_id)
-- KEYS[2] node unavailability hash  K.node_unavail(node_id)
-- derived: K.unavail_due()
-- ARGV[1] caller instance (must own the node)
-- ARGV[2] node id
-- ARGV[3] epoch the caller speaks for
-- ARGV[4] service name
-- ARGV[5] ttl ms (> 0)
-- returns {{unix ms until which the mark holds}, {}}
-- errors  E_NO_NODE, E_WRONG_OWNER, E_STALE_EPOCH, E_BAD_ARG
CALLER = ARGV[1]
local node_id = ARGV[2]
local ttl = tonumber(ARGV[5])
if not ttl or ttl <= 0 or ttl % 1 ~= 0 then
  return err('E_BAD_ARG', 'ttl must be a whole number of ms > 0')
end
if ARGV[4] == '' then return err('E_BAD_ARG', 'service must be a non-empty string') end
local vals = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'state')
if not vals[1] or vals[3] == 'offline' then
  return err('E_NO_NODE', 'node ' .. node_id .. ' is not registered')
end
if vals[1] ~= CALLER then return err('E_WRONG_OWNER', 'node ' .. node_id .. ' is owned by ' .. vals[1]) end
if vals[2] ~= ARGV[3] then return err('E_STALE_EPOCH', 'node ' .. node_id .. ' epoch ' .. ARGV[3] .. ' is not current') end
local now = now_ms()
local untl = now + ttl
redis.call('HSET', KEYS[2], ARGV[4], int_s(untl))
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], int_s(ttl)) end
redis.call('ZADD', K.unavail_due(), 'LT', int_s(untl), node_id)
return {{untl}, {}}
