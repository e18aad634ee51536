-- pool_limits_set: replace the dispatch rates of the rate-limited pools (at start and reload).
--   A pool with a rate dispatches at most <burst> jobs at once and <rate> per second over time
--   (a token bucket per pool, K.pool_bucket(), debited by every dispatch path: select_node and
--   feed_node); jobs it cannot take now stay queued, and the reaper hands them out when the
--   pool's bucket has a token again (K.rate_held()). A pool left out has no rate from now on.
-- KEYS[1] pool rates                K.pool_limits()
-- ARGV[1] caller instance
-- ARGV[2] JSON object: pool key -> [rate per second (> 0), burst (>= 1)]
-- returns {{the number of rate-limited pools}, deliveries (none)}
-- errors  E_BAD_ARG (not such an object)
CALLER = ARGV[1]
local ok, limits = pcall(cjson.decode, ARGV[2])
if not ok or type(limits) ~= 'table' then
  return err('E_BAD_ARG', 'pool limits must be a JSON object')
end
local flat, n = {}, 0
for pool, lim in pairs(limits) do
  local pair = type(lim) == 'table'
  local rate, burst = pair and tonumber(lim[1]), pair and tonumber(lim[2])
  if type(pool) ~= 'string' or not rate or rate <= 0 or not burst or burst < 1 then
    return err('E_BAD_ARG', 'a pool rate is [rate > 0, burst >= 1]')
  end
  flat[#flat + 1] = pool
  flat[#flat + 1] = tostring(rate) .. ' ' .. int_s(burst)
  n = n + 1
end
redis.call('DEL', KEYS[1])
if n > 0 then redis.call('HSET', KEYS[1], unpack_list(flat)) end
return {{n}, LOCAL}
