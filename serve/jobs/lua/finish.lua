-- The lease owner ends its job: completed, failed or cancelled. Replies the status the job ended in, or
-- 'lost' when the worker does not own the job any more (its result must not be shown). A completion that
-- comes after a client's cancel ends the job cancelled, without its output: the cancel was answered 202
-- first. Repeating the same call (a lost reply) answers the same and changes nothing.
-- ARGV: prefix, id, worker, now, expires_at, new status, field/value pairs (the first names the result:
-- the output key, the error, the cancel flag).
local id, worker, now, new = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
if redis.call('HGET', job, 'lease_owner') ~= worker then return 'lost' end
if status == new and redis.call('HGET', job, ARGV[7]) == ARGV[8] then return new end
if status == 'cancelled' and new == 'completed' and redis.call('HGET', job, 'cancel_requested') == '1' then
  return 'cancelled'
end
if status ~= 'in_progress' then return 'lost' end
local tenant = redis.call('HGET', job, 'tenant')
if new == 'completed' and redis.call('HGET', job, 'cancel_requested') == '1' then
  finish(job, id, tenant, 'in_progress', 'cancelled', now, ARGV[5])
  return 'cancelled'
end
redis.call('HSET', job, unpack(ARGV, 7))
finish(job, id, tenant, 'in_progress', new, now, ARGV[5])
return new
