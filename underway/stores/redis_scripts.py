"""The Lua scripts of the Redis store: each state change is one atomic script call.

Every script gets ARGV[1] = key prefix and ARGV[2] = now (epoch seconds, as the
caller formatted it, so stored times round-trip exactly). Times the caller knows
(lease ends, run_at) are computed in Python; Lua only adds `keep_for`.

An event is stored as `kind|at|idx|data`; output events leave `data` empty and
point into the output list by `idx`, so an item is stored once.
"""

from __future__ import annotations

from .._util import dumps
from .redis_keys import LUA_KEYS

_CANCELLED_ERROR = dumps(
    {"type": "Cancelled", "message": "cancelled before it started", "traceback": None}
)

_HELPERS = (
    LUA_KEYS
    + f"""
local NOW = ARGV[2]
local CANCELLED_ERROR = [==[{_CANCELLED_ERROR}]==]

local function push_event(id, kind, data)
  redis.call('RPUSH', k_events(id), kind .. '|' .. NOW .. '||' .. data)
end

local function changed(id)
  redis.call('PUBLISH', c_job(id), '')
end

-- Wake one idle claimer (a worker slot that found nothing), if any is still waiting;
-- false when none was. Its process hears it on its own channel; a busy system
-- publishes nothing.
local function wake()
  local t = redis.call('TIME')
  local clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
  while true do
    local got = redis.call('ZPOPMIN', K_IDLE)
    if #got == 0 then return false end
    if tonumber(got[2]) >= clock then
      local process, thread = string.match(got[1], '^(.*)/([^/]*)$')
      -- Nobody listening: that process is gone; wake the next idle slot instead.
      if redis.call('PUBLISH', C_WAKE .. process, thread) > 0 then return true end
    end
  end
end

local function move_state(id, from, to)
  redis.call('ZREM', k_state(from), id)
  redis.call('ZADD', k_state(to), 0, id)
end

local function make_ready(id, task, queue, priority, run_at)
  if tonumber(run_at) > tonumber(NOW) then
    redis.call('ZADD', K_DELAYED, run_at, id)
  else
    redis.call('ZADD', k_ready(task), priority, id)
  end
  redis.call('ZADD', k_queue(queue), priority, id)
end

-- Leave queued or running for a terminal state, with `state` and `done` events.
-- `quiet`: wake no idle claimer (the caller decides once for a batch). `started`:
-- the start of a job claimed without one (it waited in its worker), or nil.
local function terminate(id, from, to, result, err, keep_for, quiet, started)
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'task', 'queue', 'keep_for', 'supersede_key', 'started_at')
  if keep_for == nil or keep_for == '' then keep_for = f[3] end
  local expires = tonumber(NOW) + tonumber(keep_for)
  redis.call('HSET', j, 'state', to, 'finished_at', NOW, 'expires_at', expires)
  if started and started ~= '' and not f[5] then redis.call('HSET', j, 'started_at', started) end
  redis.call('HDEL', j, 'worker', 'lease_until')
  for field, value in pairs({{result = result, error = err}}) do
    if value ~= '' then redis.call('HSET', j, field, value) else redis.call('HDEL', j, field) end
  end
  if from == 'queued' then
    redis.call('ZREM', k_ready(f[1]), id)
    redis.call('ZREM', K_DELAYED, id)
    redis.call('ZREM', k_queue(f[2]), id)
  else
    redis.call('ZREM', K_LEASES, id)
    redis.call('SREM', k_running(f[1]), id)
  end
  move_state(id, from, to)
  redis.call('ZADD', K_EXPIRY, expires, id)
  redis.call('ZADD', K_FINISHED, NOW, id)
  if f[4] then redis.call('SREM', k_sup(f[4]), id) end
  push_event(id, 'state', '{{"state":"' .. to .. '"}}')
  local r = result
  if r == '' then r = 'null' end
  local e = err
  if e == '' then e = 'null' end
  push_event(id, 'done', '{{"state":"' .. to .. '","result":' .. r .. ',"error":' .. e .. '}}')
  changed(id)
  if not quiet then wake() end
end

local function cancel(id)
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'cancel_requested')
  if not f[1] then return false end
  if f[1] == 'queued' then
    terminate(id, 'queued', 'cancelled', '', CANCELLED_ERROR, nil)
  elseif f[1] == 'running' and f[2] ~= '1' then
    redis.call('HSET', j, 'cancel_requested', '1')
    push_event(id, 'log', '"cancel requested"')
    changed(id)
  end
  return true
end

-- Remove every trace of a job: its hash, events, output and index entries.
local function erase(id)
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'task', 'queue', 'state', 'owner', 'idempotency_key',
                       'supersede_key')
  redis.call('DEL', j, k_events(id), k_output(id))
  if not f[1] then return 0 end
  redis.call('ZREM', K_ALL, id)
  redis.call('ZREM', k_task(f[1]), id)
  redis.call('ZREM', k_queue(f[2]), id)
  redis.call('ZREM', k_ready(f[1]), id)
  redis.call('ZREM', k_state(f[3]), id)
  redis.call('SREM', k_running(f[1]), id)
  redis.call('ZREM', K_DELAYED, id)
  redis.call('ZREM', K_LEASES, id)
  redis.call('ZREM', K_EXPIRY, id)
  redis.call('ZREM', K_FINISHED, id)
  if f[4] then redis.call('ZREM', k_owner(f[4]), id) end
  if f[5] and redis.call('GET', k_idem(f[5])) == id then redis.call('DEL', k_idem(f[5])) end
  if f[6] then redis.call('SREM', k_sup(f[6]), id) end
  changed(id)
  return 1
end
"""
)

# ARGV: P, now, id, task, queue, priority, run_at, owner, idem, sup, then field pairs.
ENQUEUE = (
    _HELPERS
    + """
local id, task, queue, priority, run_at = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local owner, idem, sup = ARGV[8], ARGV[9], ARGV[10]
if idem ~= '' then
  local existing = redis.call('GET', k_idem(idem))
  if existing then
    local rec = redis.call('HGETALL', k_job(existing))
    if #rec > 0 then return {0, rec} end
  end
end
if sup ~= '' then
  for _, other in ipairs(redis.call('SMEMBERS', k_sup(sup))) do cancel(other) end
  redis.call('SADD', k_sup(sup), id)
end
redis.call('HSET', k_job(id), unpack(ARGV, 11))
redis.call('RPUSH', k_events(id), 'state|' .. NOW .. '||{"state":"queued"}')
redis.call('ZADD', K_ALL, 0, id)
redis.call('ZADD', k_task(task), 0, id)
redis.call('ZADD', k_state('queued'), 0, id)
if owner ~= '' then redis.call('ZADD', k_owner(owner), 0, id) end
if idem ~= '' then redis.call('SET', k_idem(idem), id) end
make_ready(id, task, queue, priority, run_at)
wake()
return {1}
"""
)

# ARGV: P, now, count, then per job: id, task, queue, priority, run_at, owner,
# number of hash fields, then the field pairs. Jobs without idempotency or supersede keys.
ENQUEUE_MANY = (
    _HELPERS
    + """
local at = 4
local count = tonumber(ARGV[3])
for _ = 1, count do
  local id, task, queue, priority, run_at = ARGV[at], ARGV[at + 1], ARGV[at + 2],
                                            ARGV[at + 3], ARGV[at + 4]
  local owner, nfields = ARGV[at + 5], tonumber(ARGV[at + 6])
  redis.call('HSET', k_job(id), unpack(ARGV, at + 7, at + 6 + nfields))
  redis.call('RPUSH', k_events(id), 'state|' .. NOW .. '||{"state":"queued"}')
  redis.call('ZADD', K_ALL, 0, id)
  redis.call('ZADD', k_task(task), 0, id)
  redis.call('ZADD', k_state('queued'), 0, id)
  if owner ~= '' then redis.call('ZADD', k_owner(owner), 0, id) end
  make_ready(id, task, queue, priority, run_at)
  at = at + 7 + nfields
end
for _ = 1, count do
  if not wake() then break end
end
return count
"""
)

# ARGV: P, now, id -> {hash, position or false}
GET = (
    LUA_KEYS
    + """
local rec = redis.call('HGETALL', k_job(ARGV[3]))
if #rec == 0 then return {} end
local position = false
local f = redis.call('HMGET', k_job(ARGV[3]), 'state', 'queue')
if f[1] == 'queued' then position = redis.call('ZRANK', k_queue(f[2]), ARGV[3]) end
return {rec, position}
"""
)

# ARGV: P, now, worker, lease_until, max_jobs, claimer, n_tasks, tasks..., (task, limit) pairs...
# `claimer` names the calling thread ("process/thread"), to be woken when work comes.
# Returns {claimed hashes, earliest run_at among delayed jobs or ''}.
# ARGV: P, now, worker, lease_until, max_jobs, claimer, n, m, then n task names, then
# m finishes of 6 fields (id, state, result JSON or '', error JSON or '', keep_for,
# started_at or ''),
# then (task, limit) pairs. Finishes come first: ends and the next claim in one call.
# -> {claimed records, earliest delayed run_at or '', ids finished}
CLAIM = (
    _HELPERS
    + """
local worker, lease_until, max_jobs = ARGV[3], ARGV[4], tonumber(ARGV[5])
local claimer, n, m = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local finished = {}
local at = 9 + n
for _ = 1, m do
  local id = ARGV[at]
  local f = redis.call('HMGET', k_job(id), 'state', 'worker')
  if f[1] == 'running' and f[2] == worker then
    terminate(id, 'running', ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], true,
              ARGV[at + 5])
    finished[#finished + 1] = id
  end
  at = at + 6
end
local limits, limited = {}, false
for i = at, #ARGV, 2 do
  limits[ARGV[i]] = tonumber(ARGV[i + 1])
  limited = true
end
-- Ends free room under concurrency limits: an idle claimer elsewhere may take it.
if #finished > 0 and (limited or max_jobs <= 0) then wake() end
if max_jobs <= 0 then return {{}, '', finished} end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', NOW, 'LIMIT', 0, 500)) do
  local f = redis.call('HMGET', k_job(id), 'task', 'priority')
  if f[1] then redis.call('ZADD', k_ready(f[1]), f[2], id) end
  redis.call('ZREM', K_DELAYED, id)
end
local room, candidates = {}, {}
for i = 9, 8 + n do
  local task = ARGV[i]
  local r = max_jobs
  if limits[task] then
    r = math.min(r, limits[task] - redis.call('SCARD', k_running(task)))
  end
  room[task] = r
  if r > 0 then
    local got = redis.call('ZRANGE', k_ready(task), 0, r - 1, 'WITHSCORES')
    for k = 1, #got, 2 do
      candidates[#candidates + 1] = {tonumber(got[k + 1]), got[k], task}
    end
  end
end
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out = {}
for _, c in ipairs(candidates) do
  if #out >= max_jobs then break end
  local id, task = c[2], c[3]
  if room[task] > 0 then
    room[task] = room[task] - 1
    local j = k_job(id)
    redis.call('ZREM', k_ready(task), id)
    redis.call('ZREM', k_queue(redis.call('HGET', j, 'queue')), id)
    local attempt = redis.call('HINCRBY', j, 'attempt', 1)
    redis.call('HSET', j, 'state', 'running', 'worker', worker,
               'lease_until', lease_until, 'cancel_requested', '0')
    -- The first starts now; the others wait in the worker, not started yet.
    if #out == 0 then
      redis.call('HSET', j, 'started_at', NOW)
    else
      redis.call('HDEL', j, 'started_at')
    end
    move_state(id, 'queued', 'running')
    redis.call('ZADD', K_LEASES, lease_until, id)
    redis.call('SADD', k_running(task), id)
    push_event(id, 'state', '{"state":"running","attempt":' .. attempt .. '}')
    changed(id)
    out[#out + 1] = redis.call('HGETALL', j)
  end
end
if #out < max_jobs then
  local t = redis.call('TIME')
  redis.call('ZADD', K_IDLE, tonumber(t[1]) + IDLE_TTL, claimer)
else
  redis.call('ZREM', K_IDLE, claimer)
  -- More may be waiting: pass the baton to another idle slot rather than leave it asleep.
  for i = 9, 8 + n do
    if redis.call('ZCARD', k_ready(ARGV[i])) > 0 then wake() break end
  end
end
local nxt = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
return {out, nxt[2] or '', finished}
"""
)

# ARGV: P, now, worker, lease_until, ids... -> ids with a cancel request
RENEW = (
    LUA_KEYS
    + """
local worker, lease_until = ARGV[3], ARGV[4]
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'worker', 'cancel_requested')
  if f[1] == 'running' and f[2] == worker then
    redis.call('HSET', j, 'lease_until', lease_until)
    redis.call('ZADD', K_LEASES, lease_until, id)
    if f[3] == '1' then out[#out + 1] = id end
  end
end
return out
"""
)

# ARGV: P, now, id, progress JSON
PROGRESS = (
    _HELPERS
    + """
local id = ARGV[3]
if redis.call('HGET', k_job(id), 'state') ~= 'running' then return 0 end
redis.call('HSET', k_job(id), 'progress', ARGV[4])
push_event(id, 'progress', ARGV[4])
changed(id)
return 1
"""
)

# ARGV: P, now, id, (kind, data) pairs
APPEND = (
    _HELPERS
    + """
local id = ARGV[3]
local j = k_job(id)
if redis.call('EXISTS', j) == 0 then return 0 end
local first = tonumber(redis.call('HGET', j, 'output_count') or '0')
local idx = first
local events, items = {}, {}
local function flush()
  -- unpack() is bounded by Lua's C stack, so long batches go in slices
  if #events > 0 then redis.call('RPUSH', k_events(id), unpack(events)) end
  if #items > 0 then redis.call('RPUSH', k_output(id), unpack(items)) end
  events, items = {}, {}
end
for i = 4, #ARGV, 2 do
  local kind = ARGV[i]
  if kind == 'output' then
    events[#events + 1] = 'output|' .. NOW .. '|' .. idx .. '|'
    items[#items + 1] = ARGV[i + 1]
    idx = idx + 1
  else
    events[#events + 1] = kind .. '|' .. NOW .. '||' .. ARGV[i + 1]
  end
  if #events >= 1000 then flush() end
end
flush()
if idx > first then redis.call('HSET', j, 'output_count', idx) end
changed(id)
return 1
"""
)

# ARGV: P, now, id, worker ('' = anyone), state, result JSON or '', error JSON or '',
# keep_for, started_at or ''
FINISH = (
    _HELPERS
    + """
local id, worker = ARGV[3], ARGV[4]
local f = redis.call('HMGET', k_job(id), 'state', 'worker')
if f[1] ~= 'running' or (worker ~= '' and f[2] ~= worker) then return 0 end
terminate(id, 'running', ARGV[5], ARGV[6], ARGV[7], ARGV[8], false, ARGV[9])
return 1
"""
)

# ARGV: P, now, worker, ids... Jobs claimed but never started go back, due now, with
# their attempt given back.
RELEASE = (
    _HELPERS
    + """
local worker = ARGV[3]
for i = 4, #ARGV do
  local id = ARGV[i]
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'worker', 'task', 'queue', 'priority', 'attempt')
  if f[1] == 'running' and f[2] == worker then
    if tonumber(f[6]) > 0 then redis.call('HINCRBY', j, 'attempt', -1) end
    redis.call('HSET', j, 'state', 'queued', 'run_at', NOW)
    redis.call('HDEL', j, 'worker', 'lease_until', 'started_at')
    redis.call('ZREM', K_LEASES, id)
    redis.call('SREM', k_running(f[3]), id)
    move_state(id, 'running', 'queued')
    make_ready(id, f[3], f[4], f[5], NOW)
    push_event(id, 'state', '{"state":"queued"}')
    changed(id)
    wake()
  end
end
return 1
"""
)

# ARGV: P, now, id, worker, run_at, error JSON, log event data, state event data
RETRY = (
    _HELPERS
    + """
local id, worker, run_at = ARGV[3], ARGV[4], ARGV[5]
local j = k_job(id)
local f = redis.call('HMGET', j, 'state', 'worker', 'task', 'queue', 'priority')
if f[1] ~= 'running' or f[2] ~= worker then return 0 end
redis.call('HSET', j, 'state', 'queued', 'run_at', run_at, 'error', ARGV[6])
redis.call('HDEL', j, 'worker', 'lease_until')
redis.call('ZREM', K_LEASES, id)
redis.call('SREM', k_running(f[3]), id)
move_state(id, 'running', 'queued')
make_ready(id, f[3], f[4], f[5], run_at)
push_event(id, 'log', ARGV[7])
push_event(id, 'state', ARGV[8])
changed(id)
wake()
return 1
"""
)

# ARGV: P, now, id -> the job's hash after the request ({} when unknown)
CANCEL = (
    _HELPERS
    + """
if not cancel(ARGV[3]) then return {} end
return redis.call('HGETALL', k_job(ARGV[3]))
"""
)

# ARGV: P, now, id -> 1 when it existed
DELETE = (
    _HELPERS
    + """
return erase(ARGV[3])
"""
)

# ARGV: P, now, batch -> hashes of the jobs recovered
RECOVER = (
    _HELPERS
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. NOW, 'LIMIT', 0,
                                tonumber(ARGV[3]))) do
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'worker', 'cancel_requested', 'attempt',
                       'max_attempts', 'task', 'queue', 'priority', 'started_at')
  if f[1] ~= 'running' then
    redis.call('ZREM', K_LEASES, id)
  else
    local msg = 'worker ' .. (f[2] or 'None') .. ' stopped renewing its lease'
    local err = '{"type":"WorkerLost","message":' .. cjson.encode(msg) .. ',"traceback":null}'
    if not f[9] and f[3] ~= '1' and tonumber(f[4]) > 0 then
      -- Claimed but never started: not an attempt.
      redis.call('HINCRBY', j, 'attempt', -1)
    end
    if f[3] == '1' then
      terminate(id, 'running', 'cancelled', '', err, nil)
    elseif not f[9] or tonumber(f[4]) < tonumber(f[5]) then
      redis.call('HSET', j, 'state', 'queued', 'run_at', NOW, 'error', err)
      redis.call('HDEL', j, 'worker', 'lease_until')
      redis.call('ZREM', K_LEASES, id)
      redis.call('SREM', k_running(f[6]), id)
      move_state(id, 'running', 'queued')
      make_ready(id, f[6], f[7], f[8], NOW)
      push_event(id, 'log', cjson.encode(msg .. '; requeued'))
      push_event(id, 'state', '{"state":"queued"}')
      changed(id)
      wake()
    else
      terminate(id, 'running', 'failed', '', err, nil)
    end
    out[#out + 1] = redis.call('HGETALL', j)
  end
end
return out
"""
)

# ARGV: P, now, index ('expiry' or 'finished'), bound, batch -> number erased
PURGE = (
    _HELPERS
    + """
local index = K_EXPIRY
if ARGV[3] == 'finished' then index = K_FINISHED end
local ids = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[4], 'LIMIT', 0,
                       tonumber(ARGV[5]))
for _, id in ipairs(ids) do erase(id) end
return #ids
"""
)

# ARGV: P, now, id, after, limit -> {entries, first output index, output items}
EVENTS = (
    LUA_KEYS
    + """
local id, after, limit = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local entries = redis.call('LRANGE', k_events(id), after, after + limit - 1)
local lo, hi = nil, nil
for _, e in ipairs(entries) do
  if string.sub(e, 1, 7) == 'output|' then
    local idx = tonumber(string.match(e, '^output|[^|]*|(%d+)|'))
    if lo == nil or idx < lo then lo = idx end
    if hi == nil or idx > hi then hi = idx end
  end
end
if lo == nil then return {entries, -1, {}} end
return {entries, lo, redis.call('LRANGE', k_output(id), lo, hi)}
"""
)

UPDATE_META = (
    _HELPERS
    + """
local key = k_job(ARGV[3])
if redis.call('EXISTS', key) == 0 then return 0 end
local current = redis.call('HGET', key, 'meta')
local meta = {}
if current and current ~= '' then meta = cjson.decode(current) end
for name, value in pairs(cjson.decode(ARGV[4])) do meta[name] = value end
redis.call('HSET', key, 'meta', cjson.encode(meta))
changed(ARGV[3])
return 1
"""
)
