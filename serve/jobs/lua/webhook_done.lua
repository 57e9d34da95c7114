-- The outcome of one delivery attempt: 'delivered' and 'gave_up' end the delivery, 'retry' sets its next
-- time. The job's record counts the attempts and keeps the last error (the result shows them).
-- ARGV: prefix, delivery id, request id, outcome, next attempt time ('' unless retry), error ('' for none).
local delivery, id, outcome = ARGV[2], ARGV[3], ARGV[4]
local job = P .. 'job:' .. id
if redis.call('EXISTS', job) == 1 then
  redis.call('HINCRBY', job, 'webhook_attempts', 1)
  if ARGV[6] ~= '' then redis.call('HSET', job, 'webhook_last_error', ARGV[6]) end
  if outcome == 'delivered' then redis.call('HINCRBY', job, 'webhook_delivered', 1) end
  if outcome == 'gave_up' then redis.call('HINCRBY', job, 'webhook_failed', 1) end
end
redis.call('HINCRBY', P .. 'metrics:counter:webhook_attempts', outcome, 1)
if outcome == 'retry' then
  redis.call('ZADD', P .. 'wh_due', ARGV[5], delivery)
else
  redis.call('DEL', P .. 'wh:' .. delivery)
  redis.call('ZREM', P .. 'wh_due', delivery)
end
return 1
