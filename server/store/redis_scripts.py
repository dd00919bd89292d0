"""Lua scripts of ``RedisStore``: every state change of a job is one script, so it is atomic.

ARGV[1] is always the key prefix; the scripts build the other key names themselves, which ties the
store to a single Redis (or a primary with replicas / Sentinel), not Redis Cluster. Times come from
Redis' own clock (``TIME``), so pods with skewed clocks still agree on when a lease runs out, and
the lease in the job hash matches the idle time Redis keeps for the stream entry.

The scripts live by what they do in redis_scripts_jobs, redis_scripts_leases and redis_scripts_side;
this module holds the helpers every one of them is sent with (``PRELUDE``) and the table by name.
"""

from __future__ import annotations

from .redis_scripts_jobs import ADD, CANCEL, COMPLETE, PROGRESS, RENEW, TAKE, TERMINAL
from .redis_scripts_leases import EXPIRE_RESULTS, HAND_BACK, RELEASE_WORKER, REQUEUE_EXPIRED
from .redis_scripts_side import DUE_DELIVERIES, EXPIRE_UPLOADS, IDEMPOTENCY_ABORT, IDEMPOTENCY_BEGIN, RATE_HIT

GROUP = "workers"

# Helpers shared by every script (each is sent as PRELUDE + its body).
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
