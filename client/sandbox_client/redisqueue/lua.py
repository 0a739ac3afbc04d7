"""The queue's atomic operations, as Lua scripts that Redis runs.

Every state change that touches more than one key is one script, so that a worker or producer that
dies between two commands cannot leave half a change behind (an execution recorded but never
queued, a claim released but its final event missing). Scripts that act for a worker first check
its claim: the job records which consumer holds which delivery, and a worker whose delivery was
taken over cannot write events or finish anymore.

Every script costs O(1) or O(log n) in the number of tenants, executions and claims (n), times
the number of entries it was asked for: no script walks every tenant or every stream.

`$NAME` stands for the constant NAME of :mod:`sandbox_client.redisqueue.keys`. Redis Cluster is not
supported: TAKE touches the ring, a tenant's list and a job in one call (see docs/queue.md).
"""

from __future__ import annotations

import string

from sandbox_client.redisqueue import keys

PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tenant_key(tenant) return '$TENANT_PREFIX' .. tenant end
local function job_key(id) return '$JOB_PREFIX' .. id end

-- Wake one idle worker. At most one token waits, and BLPOP hands a token to one blocked worker
-- only: no herd. A worker that takes while work is left passes the token on (TAKE).
local function wake()
  if redis.call('LLEN', '$WAKE') == 0 then redis.call('RPUSH', '$WAKE', '1') end
end

-- Make an execution runnable: at the end of its tenant's list, the tenant in the ring when its
-- list was empty (so it is there exactly once while it has waiting work).
local function push(tenant, id, now)
  if redis.call('RPUSH', tenant_key(tenant), id) == 1 then
    redis.call('RPUSH', '$RING', tenant)
  end
  redis.call('ZINCRBY', '$BACKLOG', 1, tenant)
  redis.call('INCR', '$WAITING')
  redis.call('HSET', job_key(id), '$STATE', '$QUEUED', '$QUEUED_MS', now)
  wake()
end

-- The next tenant of the ring and its oldest waiting execution id. The tenant moves to the ring's
-- tail, and leaves the ring when its list empties (it is the tail then, so RPOP finds it).
-- Returns false when no tenant waits; the id is false when the ring was out of step.
local function pop_next()
  local tenant = redis.call('LMOVE', '$RING', '$RING', 'LEFT', 'RIGHT')
  if not tenant then return false, false end
  local list = tenant_key(tenant)
  local id = redis.call('LPOP', list)
  if redis.call('LLEN', list) == 0 then redis.call('RPOP', '$RING') end
  if id then
    redis.call('INCRBY', '$WAITING', -1)
    if tonumber(redis.call('ZINCRBY', '$BACKLOG', -1, tenant)) <= 0 then
      redis.call('ZREM', '$BACKLOG', tenant)
    end
  end
  return tenant, id
end

local function count_running(tenant, by)
  if redis.call('HINCRBY', '$RUNNING_BY_TENANT', tenant, by) <= 0 then
    redis.call('HDEL', '$RUNNING_BY_TENANT', tenant)
  end
end

-- A new delivery of the execution, held by `consumer` until `deadline` unless renewed.
local function deliver(job, id, consumer, deadline)
  local delivery = redis.call('HINCRBY', job, '$DELIVERY', 1)
  redis.call('HSET', job, '$HOLDER', consumer)
  redis.call('ZADD', '$CLAIMS', deadline, id)
  return delivery
end

-- 'held' while `consumer` holds `delivery`; 'released' once it finished or handed it back (a
-- replayed call sees this); 'lost' when the delivery was taken over or the record is gone.
local function claim_state(job, id, consumer, delivery)
  local claim = redis.call('HMGET', job, '$HOLDER', '$DELIVERY', '$RELEASED')
  if claim[3] == delivery then return 'released' end
  if claim[1] == consumer and claim[2] == delivery and redis.call('ZSCORE', '$CLAIMS', id) then
    return 'held'
  end
  return 'lost'
end

-- Count the attempt of `delivery`, once: a replay returns the same attempt. Records, until the
-- attempt reports otherwise, that its worker stopped (what a takeover means). Returns {status,
-- attempt, request, last_kind, last_error}: begun; large (begun, but the request is over `inline`
-- bytes: ask BEGIN for it); exhausted (every attempt used, nothing counted).
local function begin_attempt(job, consumer, delivery, max_attempts, retention, inline)
  local found = redis.call('HMGET', job, '$ATTEMPTS', '$LAST_KIND', '$LAST_ERROR', '$BEGUN')
  local attempt = tonumber(found[1])
  if found[4] ~= tostring(delivery) then
    if attempt >= max_attempts then
      return {'exhausted', 0, '', found[2] or '', found[3] or ''}
    end
    attempt = redis.call('HINCRBY', job, '$ATTEMPTS', 1)
    redis.call('HSET', job, '$BEGUN', delivery, '$STATE', '$RUNNING', '$WORKER', consumer,
               '$STARTED_MS', now_ms(), '$LAST_KIND', 'CRASHED',
               '$LAST_ERROR', 'worker ' .. consumer .. ' stopped during attempt ' .. attempt)
    redis.call('PEXPIRE', job, retention)
  end
  if redis.call('HSTRLEN', job, '$REQUEST') > inline then return {'large', attempt, '', '', ''} end
  return {'begun', attempt, redis.call('HGET', job, '$REQUEST') or '', '', ''}
end

local function release(job, tenant, id, delivery)
  redis.call('ZREM', '$CLAIMS', id)
  redis.call('HSET', job, '$RELEASED', delivery)
  count_running(tenant, -1)
end

-- Event entries have ids ATTEMPT-SEQ, so a replayed append (its reply was lost with the
-- connection) finds its ids already stored and adds nothing. Events come as ARGV triples
-- (entry id, field, value) from position `first`; the stream's last id is read once.
local function add_events(stream, first, retention)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  local a, b = -1, -1
  if last then
    a, b = string.match(last[1], '^(%d+)-(%d+)$$')
    a, b = tonumber(a), tonumber(b)
  end
  for i = first, #ARGV, 3 do
    local c, d = string.match(ARGV[i], '^(%d+)-(%d+)$$')
    c, d = tonumber(c), tonumber(d)
    if c > a or (c == a and d > b) then
      redis.call('XADD', stream, ARGV[i], ARGV[i + 1], ARGV[i + 2])
      a, b = c, d
    end
  end
  redis.call('PEXPIRE', stream, retention)
end
"""

# ARGV: id, tenant, request, run_at_ms, retention_ms. Returns 1, or 0 when the id is known.
ENQUEUE = """
local id, tenant = ARGV[1], ARGV[2]
local job = job_key(id)
if redis.call('EXISTS', job) == 1 then return 0 end
local now = now_ms()
local run_at = math.max(tonumber(ARGV[4]), now)
redis.call('HSET', job, '$REQUEST', ARGV[3], '$TENANT', tenant, '$ATTEMPTS', 0,
           '$ENQUEUED_MS', now, '$RUN_AT_MS', run_at, '$DELIVERY', 0)
redis.call('PEXPIRE', job, tonumber(ARGV[5]) + run_at - now)
if run_at > now then
  redis.call('HSET', job, '$STATE', '$DELAYED_STATE')
  redis.call('ZADD', '$DELAYED', run_at, id)
else
  push(tenant, id, now)
end
return 1
"""

# ARGV: consumer, wanted, visibility_ms, promote_limit, max_attempts, retention_ms,
# inline_bytes. In one call: due delayed executions join their tenants' lists (up to
# promote_limit); executions whose holder stopped renewing its claim are taken over; then new
# ones, one per tenant in ring order, up to `wanted` in all; each taken one begins its attempt
# (as BEGIN). Returns {{{tenant, id, delivery, status, attempt, request, last_kind, last_error},
# ...}, ms until the next delayed execution is due or -1}.
TAKE = """
local consumer, wanted = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local deadline = now + tonumber(ARGV[3])
local max_attempts, retention, inline = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local function taking(job, tenant, id)
  local delivery = deliver(job, id, consumer, deadline)
  local begun = begin_attempt(job, consumer, delivery, max_attempts, retention, inline)
  return {tenant, id, delivery, unpack(begun)}
end
local due = redis.call('ZRANGE', '$DELAYED', '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[4])
for _, id in ipairs(due) do
  redis.call('ZREM', '$DELAYED', id)
  local tenant = redis.call('HGET', job_key(id), '$TENANT')
  if tenant then push(tenant, id, now) end
end
local taken = {}
for _, id in ipairs(redis.call('ZRANGE', '$CLAIMS', '-inf', now, 'BYSCORE', 'LIMIT', 0, wanted)) do
  local job = job_key(id)
  local tenant = redis.call('HGET', job, '$TENANT')
  if tenant then
    taken[#taken + 1] = taking(job, tenant, id)
  else
    redis.call('ZREM', '$CLAIMS', id)
  end
end
-- Each pass takes an id or drops an id whose record expired; the budget bounds the latter.
local budget = wanted + 16
while #taken < wanted and budget > 0 do
  budget = budget - 1
  local tenant, id = pop_next()
  if not tenant then break end
  local job = id and job_key(id)
  if id and redis.call('EXISTS', job) == 1 then
    count_running(tenant, 1)
    taken[#taken + 1] = taking(job, tenant, id)
  end
end
if redis.call('LLEN', '$RING') > 0 then wake() end
local next_due = redis.call('ZRANGE', '$DELAYED', 0, 0, 'WITHSCORES')
if #next_due == 0 then return {taken, -1} end
return {taken, math.max(0, tonumber(next_due[2]) - now)}
"""

# ARGV: consumer, visibility_ms, then id, delivery pairs. Renews the claims still held. Returns
# each pair's claim state: held, released (finished by this consumer) or lost.
HOLD = """
local deadline = now_ms() + tonumber(ARGV[2])
local states = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local state = claim_state(job_key(id), id, ARGV[1], ARGV[i + 1])
  if state == 'held' then redis.call('ZADD', '$CLAIMS', 'XX', deadline, id) end
  states[#states + 1] = state
end
return states
"""

# ARGV: tenant, id, consumer, delivery, max_attempts, retention_ms. What TAKE did for the
# delivery (begin_attempt), with the request whatever its size: for a large request, and for a
# call replayed after a lost reply. Returns {status, attempt, request, last_kind, last_error}:
# begun; exhausted; lost (the claim); gone (the record expired: the claim is dropped).
BEGIN = """
local tenant, id, consumer, delivery = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local job = job_key(id)
if redis.call('EXISTS', job) == 0 then
  if redis.call('ZREM', '$CLAIMS', id) == 1 then count_running(tenant, -1) end
  return {'gone', 0, '', '', ''}
end
if claim_state(job, id, consumer, delivery) ~= 'held' then return {'lost', 0, '', '', ''} end
return begin_attempt(job, consumer, delivery, tonumber(ARGV[5]), ARGV[6], math.huge)
"""

# KEYS: events, job. ARGV: id, consumer, delivery, retention_ms, then event triples (entry id,
# field, value). Returns 0 when the consumer lost the claim.
APPEND = """
if claim_state(KEYS[2], ARGV[1], ARGV[2], ARGV[3]) ~= 'held' then return 0 end
add_events(KEYS[1], 5, ARGV[4])
return 1
"""

# KEYS: events, job. ARGV: tenant, id, consumer, delivery, retention_ms, state, then for a dead
# letter attempts, kind, reason (empty otherwise), then event triples, the final event last.
# Stores the events, drops the request (it holds the credentials) and releases the claim,
# atomically. Returns 1, also for a replay of a finish that was done; 0 when the claim was lost.
FINISH = """
local state = claim_state(KEYS[2], ARGV[2], ARGV[3], ARGV[4])
if state == 'released' then return 1 end
if state == 'lost' then return 0 end
add_events(KEYS[1], 10, ARGV[5])
redis.call('HDEL', KEYS[2], '$REQUEST')
redis.call('HSET', KEYS[2], '$STATE', ARGV[6], '$FINISHED_MS', now_ms())
redis.call('PEXPIRE', KEYS[2], ARGV[5])
if ARGV[6] == '$DEAD_STATE' then
  redis.call('XADD', '$DEAD', 'MAXLEN', '~', $DEAD_MAXLEN, '*', '$DEAD_ID', ARGV[2],
             '$DEAD_TENANT', ARGV[1], '$DEAD_ATTEMPTS', ARGV[7], '$DEAD_KIND', ARGV[8],
             '$DEAD_REASON', ARGV[9])
end
release(KEYS[2], ARGV[1], ARGV[2], ARGV[4])
return 1
"""

# KEYS: job. ARGV: tenant, id, consumer, delivery, delay_ms, last_kind, last_error, refund.
# Schedules the next attempt (delay 0: at the end of its tenant's list now); with refund 1 the
# attempt that ended does not count (it never started). Returns 1, also for a replay; 0 when the
# claim was lost.
RETRY = """
local tenant, id, delivery = ARGV[1], ARGV[2], ARGV[4]
local state = claim_state(KEYS[1], id, ARGV[3], delivery)
if state == 'released' then return 1 end
if state == 'lost' then return 0 end
redis.call('HSET', KEYS[1], '$LAST_KIND', ARGV[6], '$LAST_ERROR', ARGV[7])
if ARGV[8] == '1' then redis.call('HINCRBY', KEYS[1], '$ATTEMPTS', -1) end
release(KEYS[1], tenant, id, delivery)
local now = now_ms()
local delay = tonumber(ARGV[5])
if delay > 0 then
  redis.call('HSET', KEYS[1], '$STATE', '$DELAYED_STATE')
  redis.call('ZADD', '$DELAYED', now + delay, id)
else
  push(tenant, id, now)
end
return 1
"""

# ARGV: top. The `top` tenants with the most waiting work: {tenant, waiting, running, age of the
# oldest waiting execution in ms}; then waiting and running executions of every tenant, delayed
# executions, dead letters, and the number of tenants with waiting work.
DEPTH = """
local now = now_ms()
local tenants = {}
local top = tonumber(ARGV[1])
if top > 0 then
  for _, tenant in ipairs(redis.call('ZRANGE', '$BACKLOG', 0, top - 1, 'REV')) do
    local list = tenant_key(tenant)
    local age = 0
    local oldest = redis.call('LINDEX', list, 0)
    if oldest then
      local queued = redis.call('HGET', job_key(oldest), '$QUEUED_MS')
      if queued then age = math.max(0, now - tonumber(queued)) end
    end
    local running = tonumber(redis.call('HGET', '$RUNNING_BY_TENANT', tenant) or '0')
    tenants[#tenants + 1] = {tenant, redis.call('LLEN', list), running, age}
  end
end
return {tenants, tonumber(redis.call('GET', '$WAITING') or '0'), redis.call('ZCARD', '$CLAIMS'),
        redis.call('ZCARD', '$DELAYED'), redis.call('XLEN', '$DEAD'),
        redis.call('ZCARD', '$BACKLOG')}
"""


def script(body: str) -> str:
    """The script with the prelude, every $NAME replaced by that constant of `keys`."""
    names = {name: value for name, value in vars(keys).items() if name.isupper()}
    return string.Template(PRELUDE + body).substitute(names)
