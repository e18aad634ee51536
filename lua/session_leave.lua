-- session_leave: the caller's instance no longer has a connection following an ordered session:
--   its results wait (in Redis) for the next session follow instead of going to the caller.
--   Changes nothing when another instance has the session now.
-- KEYS[1] the session's order hash  K.order(order id)
-- ARGV[1] caller instance
-- ARGV[2] principal
-- ARGV[3] session id
-- returns {{1 when the session left the caller, else 0}, deliveries}
-- errors  none
CALLER = ARGV[1]
if redis.call('HGET', KEYS[1], 'client') ~= CALLER then return {{0}, LOCAL, EVENTS} end
redis.call('HSET', KEYS[1], 'client', '')
return {{1}, LOCAL, EVENTS}
