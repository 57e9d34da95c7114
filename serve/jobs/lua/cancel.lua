-- A client cancels its job. Queued: cancelled at once, it never runs. Running: 'cancelling', and its
-- worker ends it cancelled at its next step (or the reaper does, if the worker is gone). Finished:
-- 'conflict'. Another tenant's or an unknown job: 'missing'.
-- ARGV: prefix, id, tenant, now, expires_at.
local id, tenant, now = ARGV[2], ARGV[3], ARGV[4]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
if not status or redis.call('HGET', job, 'tenant') ~= tenant then return {'missing'} end
if status == 'cancelled' then return {'cancelled', record(job)} end
if status == 'in_queue' then
  redis.call('HSET', job, 'cancel_requested', '1')
  finish(job, id, tenant, status, 'cancelled', now, ARGV[5])
  return {'cancelled', record(job)}
end
if status == 'in_progress' then
  redis.call('HSET', job, 'cancel_requested', '1', 'updated_at', now)
  changed(job, id, nil, now)
  return {'cancelling', record(job)}
end
return {'conflict', record(job)}
