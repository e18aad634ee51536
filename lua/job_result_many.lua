-- job_result_many: a node's burst of job messages (accepts and results) in one call.
--   Each item is what its own call would do, in order: an accept alone is job_accept
--   (record_accept), a result job_result (record_result), and an accept with its result
--   job_result with the accept implied. Each is fenced alone (node, attempt) before it writes:
--   a refused item changed nothing and the next items go on. An accept with its result that is
--   refused is answered as the two messages sent apart would be: the accept gets the refusal,
--   then the result is recorded alone. Every freed slot feeds the node, so the node's next
--   assigns come back in this one reply; each finished job's client instance gets its done.
-- KEYS[1] the first item's job hash  K.job(job_id); KEYS[2..]: the job hash of each further item
-- derived: as job_accept and job_result
-- ARGV[1] caller instance
-- ARGV[2] node id
-- ARGV[3..] groups of eight per item: job id, attempt, kind ('a' accept, 'r' result, 'ar' accept
--         and its result), ok ('1'/'0'), output (raw JSON), error (raw JSON or 'null'),
--         retryable ('1'), draw (backoff jitter in [0, 1)); an accept's result fields are ''
-- returns {{outcome, ...}, deliveries, events}: one outcome per message, in order (an 'ar' item
--         has two: its accept's, then its result's); an outcome is {state, 'new'|'duplicate'}
--         or {'!', error reply text} ('E_NO_JOB ...', 'E_STALE_ATTEMPT ...')
-- errors  E_BAD_ARG (the items are not groups of eight, or a kind is unknown): nothing done
CALLER = ARGV[1]
local node_id = ARGV[2]
local KINDS = {a = true, r = true, ar = true}
if (#ARGV - 2) % 8 ~= 0 then
  return err('E_BAD_ARG', 'items come in groups of eight after the node id')
end
for i = 3, #ARGV, 8 do
  if not KINDS[ARGV[i + 2]] then
    return err('E_BAD_ARG', 'item kind must be a, r or ar, not ' .. ARGV[i + 2])
  end
end
local out = {}
local function outcome(reply, e)
  if e then
    out[#out + 1] = {'!', e.err}
  else
    out[#out + 1] = {reply[1], reply[2]}
  end
end
for i = 3, #ARGV, 8 do
  local job_id, attempt, kind = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if kind == 'a' then
    outcome(record_accept(job_id, node_id, attempt))
  else
    local r = {job_id = job_id, node_id = node_id, attempt = attempt, ok = ARGV[i + 3],
      output = ARGV[i + 4], error = ARGV[i + 5], retryable = ARGV[i + 6], draw = ARGV[i + 7],
      att = '', blobs = {}, accepted = kind == 'ar' and '1' or ''}
    if kind == 'ar' then
      local reply, e = record_result(r)
      if e then
        out[#out + 1] = {'!', e.err}
        r.accepted = ''
        outcome(record_result(r))
      else
        out[#out + 1] = {'running', 'new'}
        out[#out + 1] = {reply[1], reply[2]}
      end
    else
      outcome(record_result(r))
    end
  end
end
return {out, LOCAL, EVENTS}
