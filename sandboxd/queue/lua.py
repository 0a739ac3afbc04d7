"""The queue's atomic operations, as Lua scripts that Redis runs.

Every state change that touches more than one key is one script, so that a worker or producer that
dies between two commands cannot leave half a change behind (an execution recorded but never
queued, an entry acknowledged but its final event missing). Scripts that act for a worker first
check that the worker still holds the entry (it is in the group's pending list under its name):
a worker whose claim was taken over cannot write events or finish anymore.

`$NAME` stands for the constant NAME of :mod:`sandboxd.queue.keys`. Redis Cluster is not
supported (scripts touch the keys of several tenants).
"""

from __future__ import annotations

import string

from sandboxd.queue import keys

PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function queue_key(tenant) return '$QUEUE_PREFIX' .. tenant end
local function job_key(id) return '$JOB_PREFIX' .. id end

-- Make an execution runnable: an entry in its tenant's stream, the tenant active, idle workers
-- woken. The stream and its group are created together and deleted together (release).
local function push(tenant, id)
  local stream = queue_key(tenant)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, '$GROUP', '0', 'MKSTREAM')
  end
  redis.call('XADD', stream, '*', '$ENTRY_ID', id)
  redis.call('SADD', '$TENANTS', tenant)
  redis.call('XADD', '$WAKE', 'MAXLEN', '~', $WAKE_MAXLEN, '*', 't', tenant)
end

local function owns(tenant, entry, consumer)
  local stream = queue_key(tenant)
  if redis.call('EXISTS', stream) == 0 then return false end
  return #redis.call('XPENDING', stream, '$GROUP', entry, entry, 1, consumer) == 1
end

-- Acknowledge and delete a finished entry, so a stream holds only waiting and running work
-- (its length is the tenant's depth); an empty stream and its tenant go away.
local function release(tenant, entry)
  local stream = queue_key(tenant)
  redis.call('XACK', stream, '$GROUP', entry)
  redis.call('XDEL', stream, entry)
  if redis.call('XLEN', stream) == 0 then
    redis.call('DEL', stream)
    redis.call('SREM', '$TENANTS', tenant)
  end
end

-- Event entries have ids ATTEMPT-SEQ, so a replayed append (its reply was lost with the
-- connection) finds its id already stored and adds nothing.
local function add_event(stream, id, field, value, retention)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  local stored = false
  if last then
    local a, b = string.match(last[1], '^(%d+)-(%d+)$$')
    local c, d = string.match(id, '^(%d+)-(%d+)$$')
    a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
    stored = a > c or (a == c and b >= d)
  end
  if not stored then redis.call('XADD', stream, id, field, value) end
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
           '$ENQUEUED_MS', now, '$RUN_AT_MS', run_at, '$STATE', '$QUEUED')
redis.call('PEXPIRE', job, tonumber(ARGV[5]) + run_at - now)
if run_at > now then
  redis.call('HSET', job, '$STATE', '$DELAYED_STATE')
  redis.call('ZADD', '$DELAYED', run_at, id)
else
  push(tenant, id)
end
return 1
"""

# ARGV: limit. Moves due delayed executions into their streams. Returns {moved, ms until the
# next one is due or -1}.
PROMOTE = """
local now = now_ms()
local due = redis.call('ZRANGE', '$DELAYED', '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[1])
for _, id in ipairs(due) do
  redis.call('ZREM', '$DELAYED', id)
  local tenant = redis.call('HGET', job_key(id), '$TENANT')
  if tenant then
    redis.call('HSET', job_key(id), '$STATE', '$QUEUED')
    push(tenant, id)
  end
end
local next_due = redis.call('ZRANGE', '$DELAYED', 0, 0, 'WITHSCORES')
if #next_due == 0 then return {#due, -1} end
return {#due, math.max(0, tonumber(next_due[2]) - now)}
"""

# ARGV: consumer, wanted. Round-robin over the active tenants, one entry of each per pass, the
# first tenant chosen by a counter shared by the fleet. Returns {{tenant, entry, id}, ...}.
TAKE = """
local tenants = redis.call('SMEMBERS', '$TENANTS')
if #tenants == 0 then return {} end
table.sort(tenants)
local start = redis.call('INCR', '$ROUND_ROBIN')
local taken, wanted = {}, tonumber(ARGV[2])
repeat
  local progress = false
  for i = 0, #tenants - 1 do
    if #taken >= wanted then return taken end
    local tenant = tenants[(start + i) % #tenants + 1]
    local stream = queue_key(tenant)
    if redis.call('EXISTS', stream) == 1 then
      local got = redis.call('XREADGROUP', 'GROUP', '$GROUP', ARGV[1], 'COUNT', 1,
                             'STREAMS', stream, '>')
      if got then
        local entry = got[1][2][1]
        taken[#taken + 1] = {tenant, entry[1], entry[2][2]}
        progress = true
      end
    end
  end
until not progress
return taken
"""

# ARGV: consumer, min_idle_ms, wanted. Takes over entries whose holder stopped renewing its claim.
CLAIM = """
local claimed, wanted = {}, tonumber(ARGV[3])
for _, tenant in ipairs(redis.call('SMEMBERS', '$TENANTS')) do
  if #claimed >= wanted then break end
  local stream = queue_key(tenant)
  if redis.call('EXISTS', stream) == 1 then
    local got = redis.call('XAUTOCLAIM', stream, '$GROUP', ARGV[1], ARGV[2], '0-0',
                           'COUNT', wanted - #claimed)
    for _, entry in ipairs(got[2]) do
      claimed[#claimed + 1] = {tenant, entry[1], entry[2][2]}
    end
  end
end
return claimed
"""

# ARGV: consumer, then tenant, entry pairs. Resets the idle time of the entries still held
# (XCLAIM JUSTID does not count a delivery). Returns the positions (from 0) of the pairs this
# consumer no longer holds.
HOLD = """
local lost = {}
for i = 2, #ARGV, 2 do
  if owns(ARGV[i], ARGV[i + 1], ARGV[1]) then
    redis.call('XCLAIM', queue_key(ARGV[i]), '$GROUP', ARGV[1], 0, ARGV[i + 1], 'JUSTID')
  else
    lost[#lost + 1] = (i - 2) / 2
  end
end
return lost
"""

# ARGV: id, consumer, max_attempts, retention_ms. Counts the attempt that starts now and records,
# until the attempt reports otherwise, that its worker stopped (what a claim takeover means).
# Returns nil when the job expired, else {attempt, request, last_kind, last_error}; attempt 0
# means that every attempt was used and nothing was counted.
BEGIN = """
local job = job_key(ARGV[1])
local found = redis.call('HMGET', job, '$REQUEST', '$ATTEMPTS', '$LAST_KIND', '$LAST_ERROR')
if not found[1] then return false end
if tonumber(found[2]) >= tonumber(ARGV[3]) then
  return {0, '', found[3] or '', found[4] or ''}
end
local attempt = redis.call('HINCRBY', job, '$ATTEMPTS', 1)
redis.call('HSET', job, '$STATE', '$RUNNING', '$WORKER', ARGV[2], '$STARTED_MS', now_ms(),
           '$LAST_KIND', 'CRASHED',
           '$LAST_ERROR', 'worker ' .. ARGV[2] .. ' stopped during attempt ' .. attempt)
redis.call('PEXPIRE', job, ARGV[4])
return {attempt, found[1], '', ''}
"""

# KEYS: events. ARGV: tenant, entry, consumer, event id, field, value, retention_ms. Returns 0
# when the consumer lost the entry.
APPEND = """
if not owns(ARGV[1], ARGV[2], ARGV[3]) then return 0 end
add_event(KEYS[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"""

# KEYS: events, job. ARGV: tenant, entry, consumer, event id, field, value, retention_ms, state,
# then for a dead letter: id, attempts, kind, reason. Stores the final event, drops the request
# (it holds the credentials) and acknowledges, atomically. Returns 0 when the entry was lost.
FINISH = """
if not owns(ARGV[1], ARGV[2], ARGV[3]) then return 0 end
add_event(KEYS[1], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
redis.call('HDEL', KEYS[2], '$REQUEST')
redis.call('HSET', KEYS[2], '$STATE', ARGV[8], '$FINISHED_MS', now_ms())
redis.call('PEXPIRE', KEYS[2], ARGV[7])
if ARGV[8] == '$DEAD_STATE' then
  redis.call('XADD', '$DEAD', 'MAXLEN', '~', $DEAD_MAXLEN, '*', '$DEAD_ID', ARGV[9],
             '$DEAD_TENANT', ARGV[1], '$DEAD_ATTEMPTS', ARGV[10], '$DEAD_KIND', ARGV[11],
             '$DEAD_REASON', ARGV[12])
end
release(ARGV[1], ARGV[2])
return 1
"""

# KEYS: job. ARGV: tenant, entry, consumer, id, delay_ms, last_kind, last_error, refund.
# Schedules the next attempt; with refund 1 the attempt that ended does not count (it never
# started). Returns 0 when the entry was lost.
RETRY = """
if not owns(ARGV[1], ARGV[2], ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], '$STATE', '$DELAYED_STATE', '$LAST_KIND', ARGV[6],
           '$LAST_ERROR', ARGV[7])
if ARGV[8] == '1' then redis.call('HINCRBY', KEYS[1], '$ATTEMPTS', -1) end
redis.call('ZADD', '$DELAYED', now_ms() + tonumber(ARGV[5]), ARGV[4])
release(ARGV[1], ARGV[2])
return 1
"""

# Per active tenant: {tenant, waiting, running, age of the oldest waiting entry in ms}; then the
# number of delayed executions and of dead letters.
DEPTH = """
local now = now_ms()
local tenants = {}
for _, tenant in ipairs(redis.call('SMEMBERS', '$TENANTS')) do
  local stream = queue_key(tenant)
  if redis.call('EXISTS', stream) == 1 then
    local group = redis.call('XINFO', 'GROUPS', stream)[1]
    local last, running = '0-0', 0
    for i = 1, #group, 2 do
      if group[i] == 'last-delivered-id' then last = group[i + 1] end
      if group[i] == 'pending' then running = group[i + 1] end
    end
    local first = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', 1)
    local age = 0
    if #first == 1 then age = now - tonumber(string.match(first[1][1], '^(%d+)')) end
    local waiting = redis.call('XLEN', stream) - running
    tenants[#tenants + 1] = {tenant, waiting, running, math.max(0, age)}
  end
end
return {tenants, redis.call('ZCARD', '$DELAYED'), redis.call('XLEN', '$DEAD')}
"""


def script(body: str) -> str:
    """The script with the prelude, every $NAME replaced by that constant of `keys`."""
    names = {name: value for name, value in vars(keys).items() if name.isupper()}
    return string.Template(PRELUDE + body).substitute(names)
