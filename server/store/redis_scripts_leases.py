"""Lua scripts of lease recovery in ``RedisStore``: jobs whose worker stopped renewing, died, or gave
them back go to the queue again (or end, when they keep dying); results past their TTL are forgotten.
Each is sent after ``redis_scripts.PRELUDE``."""

from __future__ import annotations

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
