-- Shared by every job script (prepended to each). ARGV[1] is always the key prefix "{namespace}:", so every
-- key of one namespace carries the same Redis Cluster hash tag and lives in one slot.
local P = ARGV[1]

-- Jobs per status (metrics, the autoscaler) and per tenant (its caps) follow every transition.
local function move(old, new)
  if old then redis.call('HINCRBY', P .. 'counts', old, -1) end
  if new then redis.call('HINCRBY', P .. 'counts', new, 1) end
end

local function usage(tenant, field, delta)
  redis.call('HINCRBY', P .. 'usage:' .. tenant, field, delta)
end

-- A tenant's cap: field 1 max queued, 2 max running, 3 max upload bytes ("q,r,b"; -1 = the default).
local function limit(tenant, index, default)
  local raw = redis.call('HGET', P .. 'limits', tenant)
  if raw then
    local values = {}
    for value in string.gmatch(raw, '(-?%d+)') do values[#values + 1] = tonumber(value) end
    if values[index] and values[index] >= 0 then return values[index] end
  end
  return tonumber(default)
end

-- Each change of a job's state is an entry of its event stream ``events:<id>``, which the API's SSE endpoint
-- replays from a client's Last-Event-ID: the status fields that change, as the change leaves them.
local EVENT_FIELDS = {'status', 'progress', 'eta_seconds', 'attempt', 'cancel_requested', 'started_at',
  'finished_at', 'error'}
-- A change that is a webhook event (``kind``: started, progress, completed, failed, cancelled) the job's
-- request chose is also a delivery, recorded here, in the transition itself: ``wh:<job id>:<event id>``
-- (what to send) and its time in ``wh_due``, which the dispatchers claim from.
local function changed(job, id, kind, now)
  local values = redis.call('HMGET', job, unpack(EVENT_FIELDS))
  local entry = {}
  for i, name in ipairs(EVENT_FIELDS) do
    if values[i] then
      entry[#entry + 1] = name
      entry[#entry + 1] = values[i]
    end
  end
  local event_id = redis.call('XADD', P .. 'events:' .. id, 'MAXLEN', '~', '512', '*', unpack(entry))
  if not kind then return end
  local chosen = redis.call('HGET', job, 'webhook_events')
  if not chosen or not string.find(',' .. chosen .. ',', ',' .. kind .. ',', 1, true) then return end
  local delivery = id .. ':' .. event_id
  redis.call('HSET', P .. 'wh:' .. delivery, 'request_id', id, 'tenant', redis.call('HGET', job, 'tenant'),
    'type', kind, 'event_id', event_id, 'created_at', now, 'attempts', 0)
  redis.call('ZADD', P .. 'wh_due', now, delivery)
end

-- Into the tenant's queue at the job's first sequence number (a requeued job keeps its place); a tenant
-- with queued jobs is in the rotation, entering it at the current turn. One wake-up per job.
local function enqueue(job, id, tenant)
  redis.call('ZADD', P .. 'tq:' .. tenant, redis.call('HGET', job, '_seq'), id)
  if not redis.call('ZSCORE', P .. 'rotation', tenant) then
    redis.call('ZADD', P .. 'rotation', tonumber(redis.call('GET', P .. 'turn') or '0'), tenant)
  end
  redis.call('LPUSH', P .. 'wake', id)
  redis.call('LTRIM', P .. 'wake', 0, 255)
end

local function dequeue(id, tenant)
  redis.call('ZREM', P .. 'tq:' .. tenant, id)
  if redis.call('ZCARD', P .. 'tq:' .. tenant) == 0 then redis.call('ZREM', P .. 'rotation', tenant) end
end

-- Counted here, inside the transition, so each job counts once whichever process ended it.
local function finish(job, id, tenant, old, new, now, expires_at)
  redis.call('HINCRBY', P .. 'metrics:counter:jobs', new, 1)
  redis.call('HSET', job, 'status', new, 'finished_at', now, 'updated_at', now, 'expires_at', expires_at)
  redis.call('HDEL', job, 'lease_expires_at', 'eta_seconds', 'run_deadline_at')
  if old == 'in_queue' then
    dequeue(id, tenant)
    usage(tenant, 'queued', -1)
  elseif old == 'in_progress' then
    usage(tenant, 'running', -1)
  end
  redis.call('ZREM', P .. 'leases', id)
  redis.call('ZREM', P .. 'deadlines', id)
  redis.call('ZADD', P .. 'expiry', expires_at, id)
  move(old, new)
  changed(job, id, new, now)
end

local function requeue(job, id, tenant, now)
  redis.call('HSET', job, 'status', 'in_queue', 'updated_at', now, 'progress', '0.0')
  redis.call('HDEL', job, 'lease_owner', 'lease_expires_at', 'started_at', 'eta_seconds', 'run_deadline_at')
  redis.call('ZREM', P .. 'leases', id)
  redis.call('ZREM', P .. 'deadlines', id)
  usage(tenant, 'running', -1)
  usage(tenant, 'queued', 1)
  enqueue(job, id, tenant)
  move('in_progress', 'in_queue')
  changed(job, id, nil, now)
end

local function attempts_left(job)
  return tonumber(redis.call('HGET', job, 'attempt')) < tonumber(redis.call('HGET', job, 'max_attempts'))
end

local function record(job)
  return redis.call('HGETALL', job)
end
