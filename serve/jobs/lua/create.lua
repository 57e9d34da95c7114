-- A new queued job, unless the queue or the tenant's share of it is full, or its idempotency key was used.
-- ARGV: prefix, id, tenant, max_queued (-1: unbounded), default tenant max queued, idempotency key suffix
-- ('' for none), body hash, idempotency ttl ms, then field/value pairs of the record.
local id, tenant, max_queued, idem_suffix = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[6]
local job, idem = P .. 'job:' .. id, P .. 'idem:' .. ARGV[6]
if idem_suffix ~= '' then
  local prev = redis.call('HMGET', idem, 'request_id', 'body_hash')
  -- An entry whose record was already deleted (retention) no longer binds the key.
  if prev[1] and redis.call('EXISTS', P .. 'job:' .. prev[1]) == 1 then
    if prev[2] == ARGV[7] then return {'existing', record(P .. 'job:' .. prev[1])} end
    return {'conflict', prev[1]}
  end
end
if redis.call('EXISTS', job) == 1 then return {'duplicate'} end
local queued = tonumber(redis.call('HGET', P .. 'counts', 'in_queue') or '0')
if max_queued >= 0 and queued >= max_queued then return {'full'} end
local tenant_cap = limit(tenant, 1, ARGV[5])
if tonumber(redis.call('HGET', P .. 'usage:' .. tenant, 'queued') or '0') >= tenant_cap then
  return {'tenant_full', tostring(tenant_cap)}
end
redis.call('HSET', job, unpack(ARGV, 9))
redis.call('HSET', job, '_seq', redis.call('INCR', P .. 'seq'), '_releases', 0)
enqueue(job, id, tenant)
usage(tenant, 'queued', 1)
move(nil, 'in_queue')
changed(job, id, nil, nil)
redis.call('HINCRBY', P .. 'metrics:counter:jobs_submitted', '', 1)
if idem_suffix ~= '' then
  redis.call('HSET', job, '_idem', idem_suffix)
  redis.call('HSET', idem, 'request_id', id, 'body_hash', ARGV[7])
  redis.call('PEXPIRE', idem, ARGV[8])
end
return {'created', record(job)}
