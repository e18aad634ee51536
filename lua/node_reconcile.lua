-- node_reconcile: compare the calling instance's node connections with what the store says.
--   Reads, and repairs two things only. For each node connected to the caller (id and the epoch
--   its connection holds) it returns a verdict when the store disagrees; the caller corrects it:
--     missing    the store has no record of the node                        (register again)
--     offline    the record is offline                                      (register again)
--     epoch      the record is the caller's, at another epoch                (register again)
--     not_alive  the record is current and online but not in the liveness index (register again)
--     foreign    online under another instance at an epoch not above the connection's (a store
--                that lost writes): the connection is the newer claim       (register again)
--     elsewhere  online under another instance at a higher epoch: the node registered again
--                there                                                      (close this one)
--   For each node of the caller's owned-node index with no connection at the caller it returns
--   the record's epoch when the record still says the caller owns it and it is not offline
--   (the caller takes it offline, fenced by that epoch); index entries whose record says
--   otherwise are dropped (repair 1). The namespace epoch counter is raised to the highest
--   epoch the caller's connections hold (repair 2), so a flushed or rolled-back store never
--   hands a registration an epoch that a live connection already holds.
--   Cost: one HMGET and one ZSCORE per node passed; the caller bounds each call's batch.
-- KEYS[1] liveness                  K.alive()
-- KEYS[2] counts                    K.counts()
-- KEYS[3] caller's owned-node index K.owned(caller)
-- derived: node hashes
-- ARGV[1] caller instance
-- ARGV[2] n: how many connected nodes follow
-- ARGV[3..] n pairs (node id, epoch of its connection at the caller), then the ids of nodes in
--           the caller's owned-node index that have no connection at the caller
-- returns {{{node id, verdict, ...}, {node id, epoch, ...}}, {}}
-- errors  E_BAD_ARG (n missing, more pairs announced than given, an epoch not a number)
CALLER = ARGV[1]
local n = tonumber(ARGV[2])
if not n or n < 0 or #ARGV < 2 + 2 * n then
  return err('E_BAD_ARG', 'ARGV[2] must count the (node id, epoch) pairs that follow')
end
local now = now_ms()
local verdicts, unconnected = {}, {}
local top = 0
for i = 3, 2 + 2 * n, 2 do
  local node_id, epoch = ARGV[i], tonumber(ARGV[i + 1])
  if not epoch then return err('E_BAD_ARG', 'epoch of node ' .. node_id .. ' is not a number') end
  if epoch > top then top = epoch end
  local vals = redis.call('HMGET', K.node(node_id), 'owner', 'epoch', 'state')
  local owner, rec_epoch, state = vals[1], tonumber(vals[2]), vals[3]
  local verdict = nil
  if not state then
    verdict = 'missing'
  elseif state == 'offline' then
    verdict = 'offline'
  elseif owner ~= CALLER then
    verdict = (rec_epoch and rec_epoch > epoch) and 'elsewhere' or 'foreign'
  elseif rec_epoch ~= epoch then
    verdict = 'epoch'
  else
    local exp = redis.call('ZSCORE', KEYS[1], node_id)
    if not exp or tonumber(exp) <= now then verdict = 'not_alive' end
  end
  if verdict then
    verdicts[#verdicts + 1] = node_id
    verdicts[#verdicts + 1] = verdict
  end
end
for i = 3 + 2 * n, #ARGV do
  local node_id = ARGV[i]
  local vals = redis.call('HMGET', K.node(node_id), 'owner', 'epoch', 'state')
  if vals[1] == CALLER and vals[3] and vals[3] ~= 'offline' then
    unconnected[#unconnected + 1] = node_id
    unconnected[#unconnected + 1] = tonumber(vals[2])
  else
    redis.call('SREM', KEYS[3], node_id)
  end
end
if top > (tonumber(redis.call('HGET', KEYS[2], 'epoch')) or 0) then
  redis.call('HSET', KEYS[2], 'epoch', top)
end
return {{verdicts, unconnected}, {}}
