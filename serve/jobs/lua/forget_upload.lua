-- An upload leaves its tenant's quota: it expired (its bytes are deleted) or its bytes were never stored.
-- Frees before it writes, so it runs when Redis is full. ARGV: prefix, tenant, file id.
local tenant, member = ARGV[2], ARGV[2] .. '/' .. ARGV[3]
local size = tonumber(redis.call('HGET', P .. 'upload-sizes', member) or '0')
redis.call('HDEL', P .. 'upload-sizes', member)
redis.call('ZREM', P .. 'uploads', member)
if size > 0 then usage(tenant, 'upload_bytes', -size) end
return size
