-- session_follow: route an ordered session's results to the caller's instance from now on.
--   Used by a client that reconnected (possibly to another instance) to follow a session of its
--   principal: the results that waited for it (its instance was gone, or it left) are delivered
--   in seq order at once, the later ones as they come; those still in the inbox of the instance
--   that had the session move to the caller's first (lib.lua order_move). The session is the
--   principal's own: the same name under another principal is another session.
-- KEYS[1] the session's order hash  K.order(order id)
-- derived: the session's waiting results, gap timers, instance presence, the inboxes of the
--          instance that had the session and of the caller
-- ARGV[1] caller instance
-- ARGV[2] principal
-- ARGV[3] session id
-- returns {{next seq, results still waiting, instance that had the session or ''}, deliveries}
-- errors  E_NO_SESSION (no ordered session of that name for the principal, or its retention
--         ended)
CALLER = ARGV[1]
local oid = order_id(ARGV[2], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return err('E_NO_SESSION', 'no ordered session ' .. ARGV[3] .. ' for this principal')
end
local before = order_move(oid, ARGV[2], ARGV[3])
order_release(oid, now_ms())
return {{tonumber(redis.call('HGET', KEYS[1], 'next')), redis.call('ZCARD', K.order_held(oid)),
  before}, LOCAL, EVENTS}
