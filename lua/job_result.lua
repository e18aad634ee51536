-- job_result: the node finished attempt n; the job ends done (ok) or failed (not ok).
--   The work is include/result.lua's record_result (job_result_many runs it per item).
--   Fenced by node and attempt. A second result for the attempt that already finished the job
--   is a reported no-op. The slot is freed and the node is handed the next queued job of its
--   pools in the same script; the client's instance gets exactly one done. A stage of a
--   pipeline hands its end to its pipeline instead (stages.lua stage_ended): stage_done, and
--   the next stage(s) created and placed in this same call.
-- KEYS[1] job hash                  K.job(job_id)
-- derived: node hash/jobs, pools, pools index and its charges, queues, deadlines, counts, gc,
--          session, inboxes
-- ARGV[1] caller instance
-- ARGV[2] job id
-- ARGV[3] node id
-- ARGV[4] attempt
-- ARGV[5] '1' ok, '0' failed
-- ARGV[6] output, raw JSON
-- ARGV[7] error, raw JSON ({code, message}) or 'null'
-- ARGV[8] '1': the node's accept of this attempt came with the result and was not sent on its
--         own; the job passes through running as job_accept would have made it (its counts,
--         its event, t_acc), and a finished attempt is an error as job_accept's would be.
--         '' or absent: no accept implied.
-- ARGV[9] '1': the failure is retryable (ignored when ok); with attempts left the node is
--         excluded and the job waits its backoff as a delayed job, else it ends failed
-- ARGV[10] random draw in [0, 1) for the backoff's jitter (lib.lua backoff_ms)
-- ARGV[11] the result's attachments, a JSON array of {name, size, media_type}, or '' (absent) for
--         none; kept in the job hash (out_att; their size is added to att_bytes), carried by done
-- ARGV[12..] the bytes of each attachment, in that order: kept in job_blobs as 'out:<name>'
-- returns {{state ('delayed' when retried later), 'new'|'duplicate'}, deliveries}
-- errors  E_NO_JOB, E_STALE_ATTEMPT
CALLER = ARGV[1]
local blobs = {}
for i = 12, #ARGV do blobs[i - 11] = ARGV[i] end
local reply, e = record_result({job_id = ARGV[2], node_id = ARGV[3], attempt = ARGV[4],
  ok = ARGV[5], output = ARGV[6], error = ARGV[7], accepted = ARGV[8], retryable = ARGV[9],
  draw = ARGV[10], att = ARGV[11], blobs = blobs})
if e then return e end
return {reply, LOCAL, EVENTS}
