-- job_progress: forward a node's progress report to the client's instance.
--   Fenced by node and attempt; the report is not stored.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: client instance's inbox
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- ARGV[5] progress data, raw JSON
-- returns {{state}, deliveries}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local job_id = ARGV[2]
local job, e = fenced_job(job_id, ARGV[3], ARGV[4],
  {'state', 'node', 'attempt', 'client', 'principal'})
if e then return e end
-- {'progress', job, attempt, progress JSON text, principal}, built as text (lib.lua count_state)
deliver(job.client, '["progress",' .. cjson.encode(job_id) .. ',' .. job.attempt .. ','
  .. cjson.encode(ARGV[5]) .. ',' .. cjson.encode(job.principal or '') .. ']')
return {{job.state}, LOCAL, EVENTS}
