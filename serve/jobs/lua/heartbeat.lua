-- A running job's worker reports progress and (unless its job stalled) extends its lease. The reply tells
-- it whether to go on: 'ok', 'lost' (the job is not its own any more), 'cancel' (a client cancelled it),
-- 'time_limit' (its run passed the maximum run time).
-- ARGV: prefix, id, worker, now, lease expiry ('' = do not extend), progress (''), eta ('').
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
local job = P .. 'job:' .. id
if redis.call('HGET', job, 'status') ~= 'in_progress' or redis.call('HGET', job, 'lease_owner') ~= worker then
  return 'lost'
end
redis.call('HSET', job, 'updated_at', now)
if ARGV[5] ~= '' then
  redis.call('HSET', job, 'lease_expires_at', ARGV[5])
  redis.call('ZADD', P .. 'leases', ARGV[5], id)
end
-- A change is an event (and a 'progress' webhook) only when the progress moved: a beat that repeats it
-- (the lease thread's, a step longer than a beat) or only refines the ETA is not one, so a job's stream
-- holds about one entry per step rather than one per beat.
local moved = ARGV[6] ~= '' and redis.call('HGET', job, 'progress') ~= ARGV[6]
if ARGV[6] ~= '' then redis.call('HSET', job, 'progress', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', job, 'eta_seconds', ARGV[7]) end
if moved then changed(job, id, 'progress', now) end
if redis.call('HGET', job, 'cancel_requested') == '1' then return 'cancel' end
local run_deadline = tonumber(redis.call('HGET', job, 'run_deadline_at'))
if run_deadline and tonumber(now) >= run_deadline then return 'time_limit' end
return 'ok'
