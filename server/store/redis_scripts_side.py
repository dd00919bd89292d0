"""Lua scripts of ``RedisStore``'s side tables and admission state: the webhook outbox's due
deliveries, upload expiry, per-key rate windows and Idempotency-Key records. Each is sent after
``redis_scripts.PRELUDE``."""

from __future__ import annotations

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
