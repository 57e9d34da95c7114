-- The next job for a worker, taken fairly across tenants: the tenants with queued jobs take turns (the one
-- served longest ago first), a tenant at its running cap is passed over, and within a tenant jobs go in
-- submit order. 'none' when nothing can run now.
-- ARGV: prefix, worker, now, lease expiry, run deadline ('' = none), default tenant max running,
-- retries-exhausted error json, expires_at (for a job failed here).
local worker, now, lease, deadline = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
for _, tenant in ipairs(redis.call('ZRANGE', P .. 'rotation', 0, 999)) do
  local running = tonumber(redis.call('HGET', P .. 'usage:' .. tenant, 'running') or '0')
  if running < limit(tenant, 2, ARGV[6]) then
    while true do
      local id = redis.call('ZRANGE', P .. 'tq:' .. tenant, 0, 0)[1]
      if not id then
        redis.call('ZREM', P .. 'rotation', tenant)
        break
      end
      local job = P .. 'job:' .. id
      if redis.call('HGET', job, 'status') ~= 'in_queue' then
        dequeue(id, tenant)  -- out of step with its record: never run it from here
      elseif not attempts_left(job) then
        redis.call('HSET', job, 'error', ARGV[7])
        finish(job, id, tenant, 'in_queue', 'failed', now, ARGV[8])
      else
        redis.call('HINCRBY', job, 'attempt', 1)
        redis.call('HSET', job, 'status', 'in_progress', 'lease_owner', worker, 'lease_expires_at', lease,
          'started_at', now, 'updated_at', now, 'progress', '0.0')
        redis.call('HDEL', job, 'eta_seconds')
        if deadline ~= '' then
          redis.call('HSET', job, 'run_deadline_at', deadline)
          redis.call('ZADD', P .. 'deadlines', deadline, id)
        end
        dequeue(id, tenant)
        usage(tenant, 'queued', -1)
        usage(tenant, 'running', 1)
        redis.call('ZADD', P .. 'leases', lease, id)
        move('in_queue', 'in_progress')
        changed(job, id, 'started', now)
        if redis.call('ZSCORE', P .. 'rotation', tenant) then
          redis.call('ZADD', P .. 'rotation', redis.call('INCR', P .. 'turn'), tenant)
        else
          redis.call('INCR', P .. 'turn')
        end
        return {'claimed', record(job)}
      end
    end
  end
end
return {'none'}
