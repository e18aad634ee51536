-- client_close: a client connection of the calling instance ended: its entry leaves the clients
--   view (client_open wrote it). Removing an entry that is not there changes nothing.
-- KEYS[1] the caller's client list   K.clients(caller)
-- ARGV[1] caller instance
-- ARGV[2] connection id
-- returns {{entries removed, 0 or 1}, deliveries}
-- errors  none
CALLER = ARGV[1]
return {{redis.call('HDEL', KEYS[1], ARGV[2])}, LOCAL, EVENTS}
