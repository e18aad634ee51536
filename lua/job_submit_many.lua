-- job_submit_many: accept a burst of plain jobs of one principal, each exactly as job_submit
--   would (lua/include/submit.lua), in one call, answered per job. A job refused (every error
--   job_submit returns: E_BAD_ARG, E_NOT_YOURS, E_NO_CAPACITY, E_TOO_BIG, E_QUEUE_FULL, E_QUOTA,
--   E_RATE_LIMITED, E_DUPLICATE_SEQ) is refused alone, leaving what job_submit's refusal leaves
--   (its counters, no job); the jobs after it proceed. Idempotent per job id as job_submit: an
--   id given twice in one call is accepted once and answered as a duplicate the second time.
--   The caller bounds a call's jobs and bytes ([limits] max_batch, and a payload bound).
-- KEYS[1] counts                    K.counts()
-- derived: everything job_submit derives, and each job's hash K.job(job_id)
-- ARGV[1] caller instance
-- ARGV[2] W: the arguments per job
-- ARGV[3..] the jobs, W arguments each: job_submit's ARGV[2..W+1] (principal first; no
--         attachment: a job with attachments goes through job_submit)
-- returns {results, deliveries, events}: results[i] is job i's job_submit result
--         ({'new'|'duplicate', state, attempt, done, ...}) or {'error', '<E_CODE> <message>'}
-- errors  E_BAD_ARG (ARGV[2] does not divide the jobs' arguments); a job's refusal is its result
CALLER = ARGV[1]
local width = tonumber(ARGV[2])
if not width or width < 3 or (#ARGV - 2) % width ~= 0 then
  return err('E_BAD_ARG', 'job_submit_many takes W arguments per job after W')
end
local results = {}
for first = 3, #ARGV, width do
  local args = {ARGV[1]}
  for i = 1, width do args[i + 1] = ARGV[first + i - 1] end
  local reply = submit_job({K.job(args[3]), KEYS[1]}, args)
  if reply.err then
    results[#results + 1] = {'error', reply.err}
  else
    results[#results + 1] = reply[1]
  end
end
return {results, LOCAL, EVENTS}
