-- client_open: list a client connection the calling instance holds (the clients view: `query`
--   clients, `schedd clients`, the dashboard).
--   The entry is the caller's own: it leaves with client_close when the connection ends, or with
--   the caller's whole list when the reaper finds the caller's presence expired (a crashed
--   instance). The caller's presence is pushed to at least ttl from now (ZADD GT, never back), so
--   a reader that skips the lists of expired instances sees this entry before the caller's first
--   heartbeat flush.
-- KEYS[1] the caller's client list   K.clients(caller)
-- KEYS[2] instance presence          K.instances()
-- ARGV[1] caller instance
-- ARGV[2] connection id (unique within the caller)
-- ARGV[3] the connection, raw JSON object (principal, peer, protocol, name)
-- ARGV[4] instance presence ttl ms
-- returns {{unix ms of the connection}, deliveries}
-- errors  E_BAD_ARG (empty connection id, the connection not a JSON object)
CALLER = ARGV[1]
if ARGV[2] == '' then return err('E_BAD_ARG', 'connection id must be non-empty') end
if string.sub(ARGV[3], 1, 1) ~= '{' then
  return err('E_BAD_ARG', 'the connection must be a JSON object')
end
local now = now_ms()
-- '<unix ms> <json>': the time is the store's, read with the entry without decoding it here
redis.call('HSET', KEYS[1], ARGV[2], int_s(now) .. ' ' .. ARGV[3])
redis.call('ZADD', KEYS[2], 'GT', int_s(now + tonumber(ARGV[4])), CALLER)
return {{now}, LOCAL, EVENTS}
