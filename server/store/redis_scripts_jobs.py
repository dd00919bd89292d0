"""Lua scripts of a job's life in ``RedisStore``: queue it (with its cost reservation), take it from
its stream, renew its lease, record progress, write its terminal state, cancel it. Each is sent
after ``redis_scripts.PRELUDE``, whose helpers (``jkey``, ``terminal``, ``recount``...) they use."""

from __future__ import annotations

# ARGV: prefix, job_id, max_queued, queue, retention, owner, budget_micro ('' = no budget),
# reserve_micro, then field/value pairs of the job hash. Returns {1, queued}, {-1, queued} (queue
# full) or {-2, micro-dollars left} (the reservation does not fit the owner's budget beside the costs
# and reservations it has). A call retried after a lost reply finds the job already there and adds
# (and reserves) nothing twice.
ADD = """
local id, max_queued, q, retention = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local owner, budget, reserve = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local queued = redis.call('ZCARD', P .. ':queued')
if redis.call('EXISTS', jkey(id)) == 1 then return {1, queued} end
if queued >= max_queued then return {-1, queued} end
if budget then
  local left = budget - tonumber(redis.call('HGET', P .. ':spent_micro', owner) or '0')
    - tonumber(redis.call('HGET', P .. ':reserved_micro', owner) or '0')
  if left <= 0 or reserve > left then return {-2, left} end
  redis.call('HINCRBY', P .. ':reserved_micro', owner, reserve)
else
  reserve = 0
end
local t = now()
local stream = P .. ':stream:' .. q
redis.pcall('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
local entry = redis.call('XADD', stream, '*', 'job', id)
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', jkey(id), 'status', 'queued', 'queue', q, 'entry', entry, 'created_at', fmt(t),
  'attempts', 0, 'cancel_requested', 0, 'reserved_micro', reserve, unpack(fields))
redis.call('ZADD', P .. ':queued', fmt(t), id)
redis.call('ZADD', P .. ':queued:' .. q, fmt(t), id)
redis.call('SADD', P .. ':queues', q)
recount(jkey(id), nil, 'queued')
local owner = redis.call('HGET', jkey(id), 'owner')
redis.call('SADD', P .. ':active:' .. owner, id)
redis.call('ZADD', P .. ':jobs:' .. owner, fmt(t), id)
redis.call('ZREMRANGEBYSCORE', P .. ':jobs:' .. owner, '-inf', fmt(t - retention))
return {1, queued}
"""

# A worker got a stream entry (new, or reclaimed from a dead consumer); make the job its own.
# ARGV: prefix, job_id, worker_id, lease_s, max_attempts, ran_on, entry, retention
TAKE = """
local id, worker, lease, max_attempts, ran_on, entry = ARGV[2], ARGV[3], tonumber(ARGV[4]),
  tonumber(ARGV[5]), ARGV[6], ARGV[7]
local retention = tonumber(ARGV[8])
local key = jkey(id)
local t = now()
local st = redis.call('HGET', key, 'status')
if (not st) or is_terminal(st) then
  local q = st and redis.call('HGET', key, 'queue')
  if q then
    redis.call('XACK', P .. ':stream:' .. q, GROUP, entry)
    redis.call('XDEL', P .. ':stream:' .. q, entry)
  end
  return 'done'
end
if st == 'processing' then
  local le = tonumber(redis.call('HGET', key, 'lease_expires'))
  local owner = redis.call('HGET', key, 'lease_owner')
  if le and le > t then
    -- ours already: the same call retried after a lost reply
    if owner == worker and redis.call('HGET', key, 'entry') == entry then return 'ok' end
    if owner ~= worker then return 'busy' end
  end
end
local attempts = tonumber(redis.call('HGET', key, 'attempts'))
if redis.call('HGET', key, 'cancel_requested') == '1' then
  terminal(id, 'cancelled', t, {'failure_reason_code', 'CANCELLED', 'error', 'cancelled', 'retryable', 0},
    retention)
  return 'done'
end
if attempts >= max_attempts then
  terminal(id, 'failed', t, {'failure_reason_code', 'WORKER_LOST', 'error',
    'the worker stopped ' .. attempts .. ' times while running this job', 'retryable', 1}, retention)
  return 'done'
end
if (redis.call('HGET', key, 'started_at') or '') == '' then redis.call('HSET', key, 'started_at', fmt(t)) end
if st == 'queued' then recount(key, 'queued', 'processing') end
redis.call('HSET', key, 'status', 'processing', 'lease_owner', worker, 'lease_expires', fmt(t + lease),
  'claimed_at', fmt(t), 'attempts', attempts + 1, 'progress', '', 'ran_on', ran_on, 'entry', entry)
local q = redis.call('HGET', key, 'queue')
redis.call('ZADD', P .. ':leases', fmt(t + lease), id)
redis.call('ZREM', P .. ':queued', id)
redis.call('ZREM', P .. ':queued:' .. q, id)
return 'ok'
"""

# ARGV: prefix, job_id, worker_id, lease_s. Resets the entry's idle time too (XCLAIM to itself).
RENEW = """
local id, worker, lease = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = jkey(id)
if redis.call('HGET', key, 'status') ~= 'processing' or redis.call('HGET', key, 'lease_owner') ~= worker then
  return 0
end
local t = now()
redis.call('HSET', key, 'lease_expires', fmt(t + lease))
redis.call('ZADD', P .. ':leases', fmt(t + lease), id)
local q = redis.call('HGET', key, 'queue')
redis.call('XCLAIM', P .. ':stream:' .. q, GROUP, worker, 0, redis.call('HGET', key, 'entry'), 'JUSTID')
return 1
"""

# ARGV: prefix, job_id, worker_id, progress_json. Returns 1 when the worker should stop.
PROGRESS = """
local id, worker = ARGV[2], ARGV[3]
local key = jkey(id)
local st = redis.call('HGET', key, 'status')
local owner = redis.call('HGET', key, 'lease_owner')
if st == 'processing' and owner == worker then redis.call('HSET', key, 'progress', ARGV[4]) end
if st ~= 'processing' or owner ~= worker or redis.call('HGET', key, 'cancel_requested') == '1' then
  return 1
end
return 0
"""

# ARGV: prefix, job_id, status, retention, then field/value pairs. Returns 1 if this write won.
TERMINAL = """
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
return terminal(ARGV[2], ARGV[3], now(), fields, tonumber(ARGV[4]))
"""

# ARGV: prefix, job_id, retention, ttl_s, then field/value pairs (results first; cost_micro: the
# charge). Only the winning terminal write charges the key and leaves an ETA calibration sample.
COMPLETE = """
local id, retention, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local t = now()
local key = jkey(id)
-- the same call retried after a lost reply: still a success, or the worker would delete its files
if redis.call('HGET', key, 'status') == 'completed' and redis.call('HGET', key, 'results') == fields[2] then
  return 1
end
if terminal(id, 'completed', t, fields, retention) == 0 then return 0 end
redis.call('HSET', key, 'results_expire_at', fmt(t + ttl))
redis.call('ZADD', P .. ':results_expire', fmt(t + ttl), id)
local seconds = redis.call('HGET', key, 'inference_seconds')
local work = redis.call('HGET', key, 'work')
if not work or work == '' then work = '{}' end
redis.call('LPUSH', P .. ':calibration', '{"work":' .. work .. ',"seconds":' .. seconds .. '}')
redis.call('LTRIM', P .. ':calibration', 0, 49)
local cost = tonumber(redis.call('HGET', key, 'cost_micro') or '')
if cost and cost ~= 0 then
  redis.call('HINCRBY', P .. ':spent_micro', redis.call('HGET', key, 'owner'), cost)
end
return 1
"""

# ARGV: prefix, job_id, retention. Returns the status after the call ('' if no such job).
CANCEL = """
local id = ARGV[2]
local key = jkey(id)
local st = redis.call('HGET', key, 'status')
if not st then return '' end
if st == 'queued' then
  terminal(id, 'cancelled', now(), {'failure_reason_code', 'CANCELLED',
    'error', 'cancelled before it started', 'retryable', 0}, tonumber(ARGV[3]))
elseif st == 'processing' then
  redis.call('HSET', key, 'cancel_requested', 1)
end
return redis.call('HGET', key, 'status')
"""
