"""Lua scripts of ``RedisStore``: every state change of a job is one script, so it is atomic.

ARGV[1] is always the key prefix; the scripts build the other key names themselves, which ties the
store to a single Redis (or a primary with replicas / Sentinel), not Redis Cluster. Times come from
Redis' own clock (``TIME``), so pods with skewed clocks still agree on when a lease runs out, and
the lease in the job hash matches the idle time Redis keeps for the stream entry.
"""

from __future__ import annotations

GROUP = "workers"

# Helpers shared by the scripts below (each script is sent as PRELUDE + its body).
PRELUDE = """
local P = ARGV[1]
local GROUP = 'workers'
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.6f', x) end
local function jkey(id) return P .. ':job:' .. id end
local function is_terminal(st) return st == 'completed' or st == 'failed' or st == 'cancelled' end

-- Jobs by state and contract (GET /metrics) and each owner's unfinished jobs (concurrency limits),
-- kept as counters so no request has to scan the jobs.
local function recount(key, from, to)
  local c = redis.call('HGET', key, 'contract') or 'unknown'
  if from then redis.call('HINCRBY', P .. ':jobcounts', from .. '|' .. c, -1) end
  if to then redis.call('HINCRBY', P .. ':jobcounts', to .. '|' .. c, 1) end
end

-- Write a terminal state unless one is written already; the webhook outbox row goes in with it.
local function terminal(id, status, t, fields, retention)
  local key = jkey(id)
  local st = redis.call('HGET', key, 'status')
  if (not st) or is_terminal(st) then return 0 end
  redis.call('HSET', key, 'status', status, 'finished_at', fmt(t), 'lease_owner', '', 'lease_expires', '')
  recount(key, st, status)
  local owner = redis.call('HGET', key, 'owner')
  redis.call('SREM', P .. ':active:' .. owner, id)
  -- the reservation goes with the terminal write: a job ends (and is settled) only once
  local reserved = tonumber(redis.call('HGET', key, 'reserved_micro') or '0') or 0
  if reserved ~= 0 then
    redis.call('HINCRBY', P .. ':reserved_micro', owner, -reserved)
    redis.call('HSET', key, 'reserved_micro', 0)
  end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
  local q = redis.call('HGET', key, 'queue')
  redis.call('ZREM', P .. ':leases', id)
  redis.call('ZREM', P .. ':queued', id)
  redis.call('ZREM', P .. ':queued:' .. q, id)
  local entry = redis.call('HGET', key, 'entry')
  if entry and entry ~= '' then
    redis.call('XACK', P .. ':stream:' .. q, GROUP, entry)
    redis.call('XDEL', P .. ':stream:' .. q, entry)
  end
  local cb = redis.call('HGET', key, 'callback_url')
  if cb and cb ~= '' then
    local did = 'msg_' .. id .. '_' .. status
    local dkey = P .. ':delivery:' .. did
    if redis.call('EXISTS', dkey) == 0 then
      redis.call('HSET', dkey, 'id', did, 'job_id', id, 'event', 'job.' .. status, 'url', cb,
        'contract', redis.call('HGET', key, 'contract'), 'attempts', 0, 'state', 'pending',
        'next_attempt_at', fmt(t), 'last_error', '')
      redis.call('ZADD', P .. ':deliveries', fmt(t), did)
      redis.call('HINCRBY', P .. ':deliverycounts', 'pending', 1)
    end
  end
  redis.call('EXPIRE', key, retention)
  return 1
end

-- The job hash's lease is the authority: an expired one makes the stream entry idle enough for the
-- next worker's XAUTOCLAIM at once, whatever lease that worker itself uses.
local function requeue(id, key)
  local owner = redis.call('HGET', key, 'lease_owner')
  local entry = redis.call('HGET', key, 'entry')
  if owner and owner ~= '' and entry and entry ~= '' then
    local stream = P .. ':stream:' .. redis.call('HGET', key, 'queue')
    redis.call('XCLAIM', stream, GROUP, owner, 0, entry, 'IDLE', 86400000, 'JUSTID')
  end
  redis.call('HSET', key, 'status', 'queued', 'lease_owner', '', 'lease_expires', '', 'progress', '')
  recount(key, 'processing', 'queued')
  redis.call('ZREM', P .. ':leases', id)
  local q = redis.call('HGET', key, 'queue')
  local created = redis.call('HGET', key, 'created_at')
  redis.call('ZADD', P .. ':queued', created, id)
  redis.call('ZADD', P .. ':queued:' .. q, created, id)
end
"""

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

# ARGV: prefix, max_attempts, retention. Jobs whose worker stopped renewing go back to the queue; their
# stream entry stays pending and the next worker takes it over with XAUTOCLAIM.
REQUEUE_EXPIRED = """
local max_attempts, retention = tonumber(ARGV[2]), tonumber(ARGV[3])
local t = now()
local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', fmt(t))
for _, id in ipairs(ids) do
  local key = jkey(id)
  local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
  if redis.call('HGET', key, 'status') ~= 'processing' then
    redis.call('ZREM', P .. ':leases', id)
  elseif redis.call('HGET', key, 'cancel_requested') == '1' then
    terminal(id, 'cancelled', t, {'failure_reason_code', 'CANCELLED', 'error', 'cancelled', 'retryable', 0},
      retention)
  elseif attempts >= max_attempts then
    terminal(id, 'failed', t, {'failure_reason_code', 'WORKER_LOST', 'error',
      'the worker stopped ' .. attempts .. ' times while running this job', 'retryable', 1}, retention)
  else
    requeue(id, key)
  end
end
return ids
"""

# ARGV: prefix, worker_id. A worker died: its leases end now and its entries can be reclaimed at once.
RELEASE_WORKER = """
local worker = ARGV[2]
for _, id in ipairs(redis.call('ZRANGE', P .. ':leases', 0, -1)) do
  local key = jkey(id)
  local owner, st = unpack(redis.call('HMGET', key, 'lease_owner', 'status'))
  if owner == worker and st == 'processing' then
    redis.call('HSET', key, 'lease_expires', 0)
    redis.call('ZADD', P .. ':leases', 0, id)
    local q = redis.call('HGET', key, 'queue')
    redis.call('XCLAIM', P .. ':stream:' .. q, GROUP, worker, 0, redis.call('HGET', key, 'entry'),
      'IDLE', 86400000, 'JUSTID')
  end
end
return 1
"""

# ARGV: prefix, job_id, worker_id. A worker gives up a job it still holds: queued again at once.
HAND_BACK = """
local id, worker = ARGV[2], ARGV[3]
local key = jkey(id)
if redis.call('HGET', key, 'status') ~= 'processing' or redis.call('HGET', key, 'lease_owner') ~= worker then
  return 0
end
requeue(id, key)
return 1
"""

# ARGV: prefix. Forget results past their TTL; returns their result lists (JSON) for file deletion.
EXPIRE_RESULTS = """
local ids = redis.call('ZRANGEBYSCORE', P .. ':results_expire', '-inf', fmt(now()))
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', jkey(id), 'results')
  if r then
    out[#out + 1] = r
    redis.call('HSET', jkey(id), 'results', '[]')
  end
  redis.call('ZREM', P .. ':results_expire', id)
end
return out
"""

# ARGV: prefix, limit, claim_s. Due deliveries are pushed back by claim_s as they are handed out, so two
# API pods never post the same one at once; a pod that dies mid-post leaves it to another after claim_s.
DUE_DELIVERIES = """
local t = now()
local ids = redis.call('ZRANGEBYSCORE', P .. ':deliveries', '-inf', fmt(t), 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do redis.call('ZADD', P .. ':deliveries', fmt(t + tonumber(ARGV[3])), id) end
return ids
"""

# ARGV: prefix. Returns the paths of expired uploads and forgets them.
EXPIRE_UPLOADS = """
local ids = redis.call('ZRANGEBYSCORE', P .. ':uploads_expire', '-inf', fmt(now()))
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('GET', P .. ':upload:' .. id)
  if raw then out[#out + 1] = raw end
  redis.call('DEL', P .. ':upload:' .. id)
  redis.call('ZREM', P .. ':uploads_expire', id)
end
return out
"""

# ARGV: prefix, bucket, limit, window_s. A sliding window of hits; returns 0 when this hit is allowed,
# else whole seconds until it would be.
RATE_HIT = """
local key, limit, window = P .. ':rate:' .. ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = now()
redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(t - window))
if redis.call('ZCARD', key) >= limit then
  local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  return math.max(1, math.ceil(oldest + window - t))
end
redis.call('ZADD', key, fmt(t), fmt(t) .. ':' .. redis.call('INCR', P .. ':rate_seq'))
redis.call('EXPIRE', key, math.ceil(window) + 1)
return 0
"""

# ARGV: prefix, owner, key, fingerprint, ttl_s. Returns {state, job_id}: new, done, pending or mismatch.
IDEMPOTENCY_BEGIN = """
local key = P .. ':idem:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('EXISTS', key) == 0 then
  redis.call('HSET', key, 'fingerprint', ARGV[4], 'job_id', '')
  redis.call('EXPIRE', key, math.max(1, math.ceil(tonumber(ARGV[5]))))
  return {'new', ''}
end
if redis.call('HGET', key, 'fingerprint') ~= ARGV[4] then return {'mismatch', ''} end
local job = redis.call('HGET', key, 'job_id')
if job ~= '' then return {'done', job} end
return {'pending', ''}
"""

# ARGV: prefix, owner, key. The request failed before a job existed: the key may be used again.
IDEMPOTENCY_ABORT = """
local key = P .. ':idem:' .. ARGV[2] .. ':' .. ARGV[3]
if redis.call('HGET', key, 'job_id') == '' then redis.call('DEL', key) end
return 1
"""

SCRIPTS = {
    "add": ADD,
    "take": TAKE,
    "renew": RENEW,
    "progress": PROGRESS,
    "terminal": TERMINAL,
    "complete": COMPLETE,
    "cancel": CANCEL,
    "requeue_expired": REQUEUE_EXPIRED,
    "release_worker": RELEASE_WORKER,
    "hand_back": HAND_BACK,
    "expire_results": EXPIRE_RESULTS,
    "due_deliveries": DUE_DELIVERIES,
    "expire_uploads": EXPIRE_UPLOADS,
    "rate_hit": RATE_HIT,
    "idempotency_begin": IDEMPOTENCY_BEGIN,
    "idempotency_abort": IDEMPOTENCY_ABORT,
}
