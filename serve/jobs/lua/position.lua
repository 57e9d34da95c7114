-- How many queued jobs will start before this one (0-based), read-only: jobs ahead of it in its tenant's
-- queue, plus from each other tenant as many as get a turn before it under the rotation. An estimate: a
-- tenant at its running cap is passed over, which this ignores. -1 when the job is not queued.
-- ARGV: prefix, id, tenant.
local id, tenant = ARGV[2], ARGV[3]
local rank = redis.call('ZRANK', P .. 'tq:' .. tenant, id)
if not rank then return -1 end
local own = tonumber(redis.call('ZSCORE', P .. 'rotation', tenant) or '0')
local ahead = rank
local rotation = redis.call('ZRANGE', P .. 'rotation', 0, 999, 'WITHSCORES')
for i = 1, #rotation, 2 do
  local other, score = rotation[i], tonumber(rotation[i + 1])
  if other ~= tenant then
    local turns = rank
    if score < own or (score == own and other < tenant) then turns = turns + 1 end
    ahead = ahead + math.min(turns, redis.call('ZCARD', P .. 'tq:' .. other))
  end
end
return ahead
