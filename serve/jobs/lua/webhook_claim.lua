-- Webhook deliveries that are due, each leased to this dispatcher (its due time moved to the lease's end,
-- so another dispatcher takes it again only if this one never reports back).
-- ARGV: prefix, now, lease end, limit. Reply: a flat list of delivery id, then its fields as HGETALL gives.
local now, lease_end, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local reply = {}
for _, delivery in ipairs(redis.call('ZRANGEBYSCORE', P .. 'wh_due', '-inf', now, 'LIMIT', 0, limit)) do
  local fields = redis.call('HGETALL', P .. 'wh:' .. delivery)
  if #fields == 0 then
    redis.call('ZREM', P .. 'wh_due', delivery)
  else
    redis.call('ZADD', P .. 'wh_due', lease_end, delivery)
    redis.call('HINCRBY', P .. 'wh:' .. delivery, 'attempts', 1)
    reply[#reply + 1] = delivery
    reply[#reply + 1] = fields
  end
end
return reply
