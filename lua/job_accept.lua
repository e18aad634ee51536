-- job_accept: the node accepted attempt n of a job; the run deadline starts.
--   Fenced by node and attempt. A repeated accept of the running attempt is a no-op. The work is
--   include/result.lua's record_accept (job_result_many runs it for an accept without its
--   result).
-- KEYS[1] job hash                  K.job(job_id)
-- KEYS[2] deadlines                 K.deadlines()
-- derived: counts
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- returns {{'running', 'new'|'duplicate', run deadline ms}, {}}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local reply, e = record_accept(ARGV[2], ARGV[3], ARGV[4])
if e then return e end
return {reply, LOCAL, EVENTS}
