-- Counts an upload against its tenant's byte quota before its bytes are stored; refused past the quota.
-- ARGV: prefix, tenant, file id, size, expires_at, default quota bytes. Reply: {1} or {0, quota, used}.
local tenant, member, size = ARGV[2], ARGV[2] .. '/' .. ARGV[3], tonumber(ARGV[4])
local quota = limit(tenant, 3, ARGV[6])
local used = tonumber(redis.call('HGET', P .. 'usage:' .. tenant, 'upload_bytes') or '0')
if used + size > quota then return {0, quota, used} end
usage(tenant, 'upload_bytes', size)
redis.call('ZADD', P .. 'uploads', ARGV[5], member)
redis.call('HSET', P .. 'upload-sizes', member, size)
return {1}
