-- Removes a finished job after its retention, leaving a tombstone so the API answers 410. Frees memory
-- before it writes anything, so it runs when Redis is full (noeviction): a script that has written already
-- may go on past maxmemory, and the first commands here (DEL, ZREM) are allowed there anyway.
-- ARGV: prefix, id, tombstone ttl ms.
local id = ARGV[2]
local job = P .. 'job:' .. id
local fields = redis.call('HMGET', job, 'status', 'tenant', 'idempotency_key', '_idem')
local status, tenant = fields[1], fields[2]
if status ~= 'completed' and status ~= 'failed' and status ~= 'cancelled' then return 0 end
redis.call('DEL', job, P .. 'events:' .. id)
redis.call('ZREM', P .. 'expiry', id)
redis.call('ZREM', P .. 'leases', id)
redis.call('ZREM', P .. 'deadlines', id)
if fields[4] and redis.call('HGET', P .. 'idem:' .. fields[4], 'request_id') == id then
  redis.call('DEL', P .. 'idem:' .. fields[4])
end
redis.call('HINCRBY', P .. 'counts', status, -1)
redis.call('SET', P .. 'gone:' .. id, tenant, 'PX', ARGV[3])
return 1
