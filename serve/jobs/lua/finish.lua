-- The lease owner ends its job: completed, failed or cancelled. 0 when it does not own the job any more
-- (its result must not be shown); repeating the same call (a lost reply) answers 1 and changes nothing.
-- ARGV: prefix, id, worker, now, expires_at, new status, field/value pairs (the first names the result:
-- the output key, the error, the cancel flag).
local id, worker, now, new = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local job = P .. 'job:' .. id
local status = redis.call('HGET', job, 'status')
if redis.call('HGET', job, 'lease_owner') ~= worker then return 0 end
if status == new and redis.call('HGET', job, ARGV[7]) == ARGV[8] then return 1 end
if status ~= 'in_progress' then return 0 end
redis.call('HSET', job, unpack(ARGV, 7))
finish(job, id, redis.call('HGET', job, 'tenant'), 'in_progress', new, now, ARGV[5])
return 1
