-- Jobs whose worker is gone or too slow. An expired lease (the worker died, hung, or stopped making
-- progress): back to the queue while attempts are left, else failed retries_exhausted; cancelled if a client
-- asked. A passed run deadline: failed time_limit, whoever holds the lease.
-- ARGV: prefix, now, limit, expires_at, retries-exhausted error json, time-limit error json.
local now, limit_count, expires_at = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local requeued, failed, cancelled, timed_out = {}, {}, {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'deadlines', '-inf', now, 'LIMIT', 0, limit_count)) do
  local job = P .. 'job:' .. id
  if redis.call('HGET', job, 'status') == 'in_progress' then
    redis.call('HSET', job, 'error', ARGV[6])
    redis.call('HDEL', job, 'lease_owner')
    finish(job, id, redis.call('HGET', job, 'tenant'), 'in_progress', 'failed', now, expires_at)
    timed_out[#timed_out + 1] = id
  else
    redis.call('ZREM', P .. 'deadlines', id)
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, limit_count)) do
  local job = P .. 'job:' .. id
  local tenant = redis.call('HGET', job, 'tenant')
  if redis.call('HGET', job, 'status') ~= 'in_progress' then
    redis.call('ZREM', P .. 'leases', id)
  elseif redis.call('HGET', job, 'cancel_requested') == '1' then
    redis.call('HDEL', job, 'lease_owner')
    finish(job, id, tenant, 'in_progress', 'cancelled', now, expires_at)
    cancelled[#cancelled + 1] = id
  elseif attempts_left(job) then
    requeue(job, id, tenant, now)
    requeued[#requeued + 1] = id
  else
    redis.call('HSET', job, 'error', ARGV[5])
    redis.call('HDEL', job, 'lease_owner')
    finish(job, id, tenant, 'in_progress', 'failed', now, expires_at)
    failed[#failed + 1] = id
  end
end
return {requeued, failed, cancelled, timed_out}
