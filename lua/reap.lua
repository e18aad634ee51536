-- reap: handle whatever has expired, in bounded batches; safe on every instance at once.
--   * nodes whose liveness expired go offline; their jobs are retried elsewhere, queued, or
--     failed at max_attempts;
--   * a missed ack or run deadline frees the slot, tells the node's owner to cancel, and retries
--     the job on another node (excluding this one) or fails it at max_attempts;
--   * a node whose unavailability mark ended is handed the queued jobs it can now take (the
--     marks that ended are deleted, and its entry moves to its next mark's end);
--   * a rate-limited pool whose bucket has a token again (K.rate_held()) has its members with
--     free slots handed queued jobs;
--   * a pool whose fair reservation held free slots for a principal whose activity lapsed
--     (K.fair_held()) has its members with free slots handed queued jobs;
--   * a missed queue deadline ends the job as timed_out;
--   * delayed jobs now due (K.delayed(): submitted with a delay, or backing off after a
--     retryable failure) are placed on a free slot or queued;
--   * finished jobs and offline nodes past retention are removed;
--   * inboxes and client lists of instances whose presence expired are deleted;
--   * an ordered session whose missing seq held later results past its gap timeout reports the
--     missing seqs skipped and delivers what waited (K.order_gaps()).
--   An ordered session's results also wait while its client instance's presence is expired.
--   Everything is found by range queries on sorted sets: no SCAN, no KEYS, no per-node polling.
-- KEYS[1] liveness                  K.alive()
-- KEYS[2] deadlines                 K.deadlines()
-- KEYS[3] gc                        K.gc()
-- KEYS[4] instance presence         K.instances()
-- derived: node and job keys, heartbeat times and loads, pools, pools index and its charges,
--          queues, counts, inboxes, client lists, unavailability marks and their expiry index (K.unavail_due()),
--          pool rates and buckets, held rate-limited pools (K.rate_held()), usage per principal,
--          ordered sessions (K.order_gaps(), K.order(), K.order_held())
-- ARGV[1] caller instance
-- ARGV[2] batch size per kind
-- ARGV[3] retain ms for offline node records
-- returns {{nodes lost, deadlines and due delayed jobs handled, records removed, inboxes
--          removed, ms until the next delayed job is due (0: due now; -1: none)}, deliveries}
-- errors  none
CALLER = ARGV[1]
local batch = tonumber(ARGV[2])
local now = now_ms()

local lost = redis.call('ZRANGE', KEYS[1], '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, node_id in ipairs(lost) do
  local node = hgetall(K.node(node_id))
  if node and node.state ~= 'offline' then
    node_down(node_id, node, 'liveness expired', now, tonumber(ARGV[3]))
  else
    redis.call('ZREM', KEYS[1], node_id)
  end
end

-- Marks that ended: the node may take queued jobs needing those services (feed_node checks it
-- is online and alive). The node's entry then names its next mark's end, or goes.
local marked = redis.call('ZRANGE', K.unavail_due(), '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, node_id in ipairs(marked) do
  local ukey = K.node_unavail(node_id)
  local marks = redis.call('HGETALL', ukey)
  local next_end = nil
  for i = 1, #marks, 2 do
    local untl = tonumber(marks[i + 1])
    if untl <= now then
      redis.call('HDEL', ukey, marks[i])
    elseif not next_end or untl < next_end then
      next_end = untl
    end
  end
  if next_end then
    redis.call('ZADD', K.unavail_due(), int_s(next_end), node_id)
  else
    redis.call('ZREM', K.unavail_due(), node_id)
  end
  feed_node(node_id, now)
end

-- Rate-limited pools whose bucket has a token again: their members with the most free slots
-- (16 at most) take queued work; a pool still out of tokens is entered again by feed_node.
local refilled = redis.call('ZRANGE', K.rate_held(), '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, pool in ipairs(refilled) do
  redis.call('ZREM', K.rate_held(), pool)
  local members = redis.call('ZRANGE', K.pool(pool), '+inf', '1', 'BYSCORE', 'REV', 'LIMIT', '0',
    SCAN_COUNT)
  for _, node_id in ipairs(members) do feed_node(node_id, now) end
end

-- Pools whose fair reservation lapsed (K.fair_held()): the held slots go to queued work.
fair_lapsed(now, batch)

local due = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, job_id in ipairs(due) do
  local job = hgetall(K.job(job_id))
  if not job or TERMINAL[job.state] then
    redis.call('ZREM', KEYS[2], job_id)
  elseif job.state == 'queued' then
    finish(job_id, job, 'timed_out', {ok = 0, error = cjson.encode({code = 'E_QUEUE_TIMEOUT',
      message = 'no node took the job within its queue timeout'})}, now)
  else
    local node_id = job.node
    local what = job.state == 'assigned' and 'ack' or 'run'
    local owner = redis.call('HGET', K.node(node_id), 'owner')
    deliver(owner, {'cancel', node_id, job_id, tonumber(job.attempt), what .. ' deadline missed'})
    retry(job_id, job, what .. ' deadline missed on node ' .. node_id, now, 'timed_out')
    feed_node(node_id, now)
  end
end

local released = release_due(now, batch)

local old = redis.call('ZRANGE', KEYS[3], '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, member in ipairs(old) do
  local kind, id = string.sub(member, 1, 1), string.sub(member, 3)
  if kind == 'j' then
    local job = hmget(K.job(id), DROP_FIELDS)
    if job and TERMINAL[job.state] then
      drop_finished(id, job) -- which takes the gc entry out
    else
      redis.call('ZREM', KEYS[3], member)
    end
  else
    if redis.call('HGET', K.node(id), 'state') == 'offline' then
      redis.call('DEL', K.node(id))
      redis.call('ZREM', K.nodes(), id)
      redis.call('HDEL', K.beats(), id)
    end
    redis.call('ZREM', KEYS[3], member)
  end
end

local gone = redis.call('ZRANGE', KEYS[4], '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, instance in ipairs(gone) do
  redis.call('DEL', K.inbox(instance), K.clients(instance))
  redis.call('ZREM', KEYS[4], instance)
end
local gaps = redis.call('ZRANGE', K.order_gaps(), '-inf', now, 'BYSCORE', 'LIMIT', 0, batch)
for _, oid in ipairs(gaps) do order_skip(oid, now) end
-- the next delayed job's due time, so the caller may wake for it before its next interval
local next_due = redis.call('ZRANGE', K.delayed(), '0', '0', 'WITHSCORES')
local due_in = -1
if next_due[2] then due_in = math.max(0, tonumber(next_due[2]) - now) end
return {{#lost, #due + released, #old, #gone, int_s(due_in)}, LOCAL, EVENTS}
