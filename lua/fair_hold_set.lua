-- fair_hold_set: set the fair reservation's hold (at start): a principal that submitted to a
--   pool within the hold is active there and keeps its guaranteed share of the pool's slots
--   (lib.lua, "Fair reservation"). 0 turns the reservation off: dispatch is as without it.
-- KEYS[1] the hold                  K.fair_hold()
-- ARGV[1] caller instance
-- ARGV[2] hold in ms (an integer, 0..3600000)
-- returns {{the hold in ms}, deliveries (none)}
-- errors  E_BAD_ARG (not such an integer)
CALLER = ARGV[1]
local hold = tonumber(ARGV[2])
if not hold or hold < 0 or hold > 3600000 or hold % 1 ~= 0 then
  return err('E_BAD_ARG', 'the fair hold is an integer of ms from 0 to 3600000')
end
if hold == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], int_s(hold))
end
return {{hold}, LOCAL}
