-- A stopping worker hands its job back at its original place, giving the attempt back (up to max_releases
-- times per job, so a job that keeps a replica from stopping still ends). A job cancelled meanwhile ends
-- cancelled instead. 0 when the worker does not own it.
-- ARGV: prefix, id, worker, now, max_releases, expires_at.
local id, worker, now = ARGV[2], ARGV[3], ARGV[4]
local job = P .. 'job:' .. id
if redis.call('HGET', job, 'status') ~= 'in_progress' or redis.call('HGET', job, 'lease_owner') ~= worker then
  return 0
end
local tenant = redis.call('HGET', job, 'tenant')
if redis.call('HGET', job, 'cancel_requested') == '1' then
  finish(job, id, tenant, 'in_progress', 'cancelled', now, ARGV[6])
  return 1
end
if redis.call('HINCRBY', job, '_releases', 1) <= tonumber(ARGV[5]) then
  redis.call('HINCRBY', job, 'attempt', -1)
end
requeue(job, id, tenant, now)
return 1
