"""The Lua scripts of the Redis store: each change is one atomic call.

Each script is a function of the library `LIBRARY` (FCALL; its helpers defined once,
when Redis loads it) and, for a Redis without functions, a script of its own (EVALSHA;
`Script.text`, with the helpers it uses defined at each call).

Every script gets ARGV[1] = key prefix and ARGV[2] = now (epoch seconds, as the
caller formatted it, so stored times round-trip exactly). The scripts hold no
policy: what a job becomes, its attempt count, its retry time and the events to
append all come from the lifecycle's decisions (`underway.lifecycle`). Lua only
keeps the indexes in step with each job's fields, fences writes, and claims.

An event is stored as `kind|at|attempt|idx|data`; output events leave `data`
empty and point by `idx` into their attempt's output list, so an item is stored
once. `EVENTS` hands them back with the item in place of the empty `data`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .redis_keys import LUA_KEYS, LUA_KEYS_LIBRARY

# A job's record longer than this is not sent to the process that submitted it (see
# `replied`): a waiter there reads it.
REPLY_MAX = 65536

_HELPER_DEFINITIONS = (
    f"""
local NOW = ARGV[2]
local REPLY_MAX = {REPLY_MAX}
"""
    + """
local function entry(kind, at, attempt, data)
  return kind .. '|' .. at .. '|' .. attempt .. '||' .. data
end

local function push_event(id, kind, attempt, data)
  redis.call('RPUSH', k_events(id), entry(kind, NOW, attempt, data))
end

local function changed(id)
  redis.call('PUBLISH', c_job(id), '')
end

-- Tell the store instance that submitted the job (`reply`, its process id, or nil)
-- that the job ended or was deleted, or that its state or record changed otherwise:
-- on that instance's own channel, which it listens on always, so that a thread of it
-- waiting for the job's end need not subscribe to the job's channel, nor read the job
-- back after subscribing. `doc`: the job's record (JSON) when it ended, else ''.
-- A record longer than REPLY_MAX is not sent: the waiter reads it (a large result is
-- not shipped to a process that may not wait for it).
local function replied(id, reply, doc)
  if not reply then return end
  if #doc > REPLY_MAX then doc = '' end
  redis.call('PUBLISH', C_WAKE .. reply, string.char(1) .. id .. '\\n' .. doc)
end

-- The same, carrying the job's record (a flat field/value list, as HGETALL returns
-- it; read here when `rec` is nil), or `doc`, the record already encoded (by the
-- worker that ended the job, checked by the caller): a waiter woken by it need not
-- read the job back. Nobody subscribed (the usual case for a busy system) and no
-- submitter to tell (`reply`, see `replied`): nothing to read or send.
local function changed_to(id, rec, reply, doc)
  local channel = c_job(id)
  local watched = redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0
  if not watched and not reply then return end
  if doc == nil then
    if rec == nil then rec = redis.call('HGETALL', k_job(id)) end
    doc = cjson.encode(rec)
  end
  if watched then redis.call('PUBLISH', channel, doc) end
  replied(id, reply, doc)
end

-- Wake one idle claimer (a worker slot that found nothing), if any is still waiting;
-- false when none was. The slot hears it on a channel of its own, or its process on
-- the process's (the message names the thread); a busy system publishes nothing. An
-- idle claimer is known by its member of K_IDLE, a JSON list: process, thread, worker,
-- lease (seconds), the tasks a submission may claim a job of for it, and the slot's own
-- channel (after `wake:`) when it has one. `offer`, when given, is called with that list
-- and returns the record (a flat field/value list) of a job claimed for the worker, or
-- nil: the message then carries the record, and the decoded member is returned.
local function wake(offer)
  local clock = nil
  while true do
    local got = redis.call('ZPOPMIN', K_IDLE)
    if #got == 0 then return false end
    if clock == nil then
      local t = redis.call('TIME')
      clock = tonumber(t[1]) + tonumber(t[2]) / 1e6
    end
    if tonumber(got[2]) >= clock then
      local m = cjson.decode(got[1])
      local rec = nil
      if offer ~= nil then rec = offer(m) end
      local message = m[2]
      if rec ~= nil then message = message .. '\\n' .. cjson.encode(rec) end
      -- To the slot's own channel (`m[6]`), which it reads itself while it waits, or
      -- its process's. Nobody listening: that slot or process is gone; wake the next
      -- idle slot instead.
      if redis.call('PUBLISH', C_WAKE .. (m[6] or m[1]), message) > 0 then
        if rec ~= nil then return m, rec end
        return true
      end
    end
  end
end

local function move_state(id, from, to)
  if from == to then return end
  redis.call('ZREM', k_state(from), id)
  redis.call('ZADD', k_state(to), '0', id)
end

-- A queued job goes to its task's ready set when due at `now`, else to `delayed`.
local function make_ready(id, task, queue, priority, run_at, now)
  if run_at ~= now and tonumber(run_at) > tonumber(now) then
    redis.call('ZADD', K_DELAYED, run_at, id)
  else
    redis.call('ZADD', k_ready(task), priority, id)
  end
  redis.call('ZADD', k_queue(queue), priority, id)
end

-- Take a job out of the indexes of the state it leaves.
local function leave(id, from, task, queue)
  if from == 'queued' then
    redis.call('ZREM', k_ready(task), id)
    redis.call('ZREM', K_DELAYED, id)
    redis.call('ZREM', k_queue(queue), id)
  elseif from == 'running' then
    redis.call('ZREM', K_LEASES, id)
    redis.call('SREM', k_running(task), id)
  else
    redis.call('ZREM', K_EXPIRY, id)
    redis.call('ZREM', K_FINISHED, id)
  end
end

-- Remove every trace of a job: its hash, events, output and index entries.
local function erase(id)
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'task', 'queue', 'state', 'owner', 'idempotency_key',
                       'supersede_key', 'out_top', 'reply')
  redis.call('DEL', j, k_events(id))
  if not f[1] then return 0 end
  for n = 1, tonumber(f[7] or '0') do redis.call('DEL', k_output(id, n)) end
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
  replied(id, f[8], '')
  return 1
end

-- Store a new job from `fields`, its hash's field/value pairs, with `nevents`
-- (kind, data) pairs at ARGV[ev] as its first events, stamped `now`: queued, or
-- running when `claimed` (its whole record, claimed at submission for an idle worker,
-- whose lease ends at `lease_until`), with the event a claim writes.
local function insert(id, task, queue, priority, run_at, owner, now, fields, ev, nevents,
                      claimed, lease_until)
  local events = {}
  for i = ev, ev + 2 * nevents - 1, 2 do
    events[#events + 1] = entry(ARGV[i], now, '0', ARGV[i + 1])
  end
  redis.call('ZADD', K_ALL, '0', id)
  redis.call('ZADD', k_task(task), '0', id)
  if owner ~= '' then redis.call('ZADD', k_owner(owner), '0', id) end
  if claimed then
    redis.call('HSET', k_job(id), unpack(claimed))
    events[#events + 1] = entry('state', now, '1', '{"state":"running","attempt":1}')
    redis.call('RPUSH', k_events(id), unpack(events))
    redis.call('ZADD', k_state('running'), '0', id)
    redis.call('ZADD', K_LEASES, lease_until, id)
    redis.call('SADD', k_running(task), id)
    return
  end
  redis.call('HSET', k_job(id), unpack(fields))
  if #events > 0 then redis.call('RPUSH', k_events(id), unpack(events)) end
  redis.call('ZADD', k_state('queued'), '0', id)
  make_ready(id, task, queue, priority, run_at, now)
end
"""
)
_HELPERS = LUA_KEYS + _HELPER_DEFINITIONS


def _definitions(prelude: str) -> list[tuple[set[str], str]]:
    """The top-level definitions of a script prelude: (names defined, text), in order.
    A definition is one `local` line, or a `local function` up to its closing `end` at
    the start of a line; the comment lines just above it go with it."""
    found: list[tuple[set[str], str]] = []
    lines = prelude.splitlines(keepends=True)
    i, comments = 0, ""
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i, comments = i + 1, ""
            continue
        if line.startswith("--"):
            i, comments = i + 1, comments + line
            continue
        fn = re.match(r"local function (\w+)\(", line)
        if fn:
            text, i = line, i + 1
            if not line.rstrip().endswith(" end"):
                while lines[i].rstrip() != "end":
                    text, i = text + lines[i], i + 1
                text, i = text + lines[i], i + 1
            found.append(({fn.group(1)}, comments + text))
        else:
            names = re.match(r"local ([\w, ]+) = ", line)
            if names is None:
                raise ValueError(f"not a definition: {line!r}")
            found.append(({n.strip() for n in names.group(1).split(",")}, comments + line))
            i += 1
        comments = ""
    return found


@dataclass(slots=True)
class Script:
    """One script, runnable both ways: `text` for EVAL (`sha` names it in Redis's
    script cache), and `body` as the function `function` of the library `LIBRARY`
    (named once the library is: see the end of this module)."""

    name: str
    body: str
    text: str
    sha: str
    writes: bool
    function: str = ""


_SCRIPTS: list[Script] = []


def _script(name: str, prelude: str, body: str, *, writes: bool = True) -> Script:
    """The script `body`, for EVAL after the prelude's definitions that it uses,
    directly or through another definition it uses (Redis runs a script's whole text
    on every call, and each definition costs time there: about 5 us for all of them),
    and for the library as it is."""
    needed = set(re.findall(r"\w+", body))
    kept: list[str] = []
    for names, text in reversed(_definitions(prelude)):
        if names & needed:
            kept.append(text)
            needed |= set(re.findall(r"\w+", text))
    text = "".join(reversed(kept)) + body
    script = Script(name, body, text, hashlib.sha1(text.encode()).hexdigest(), writes)
    _SCRIPTS.append(script)
    return script


# ARGV: P, now (the job's creation), id, run_at ('' when it is `now`), params (JSON),
# owner (for its index: '' for none), idem, sup, nopt, then nopt field/value pairs of
# the job's own optional fields; then task, queue, priority, nset, then nset field/value
# pairs every job of its task from this submitter gets (its settings, where to reply);
# then nevents and nevents (kind, data) pairs. The parts from `task` on are the same for
# every job of a task and priority: the client packs them once (`RedisStore._submission`).
# -> {0, existing hash} (idempotency key taken) or {1, other active ids under sup}, and
# when the job was claimed for an idle worker at once: that worker and the lease's end
ENQUEUE = _script(
    "enqueue",
    _HELPERS,
    """
local id, run_at, params = ARGV[3], ARGV[4], ARGV[5]
if run_at == '' then run_at = NOW end
local owner, idem, sup = ARGV[6], ARGV[7], ARGV[8]
local at = 10 + 2 * tonumber(ARGV[9])
local task, queue, priority = ARGV[at], ARGV[at + 1], ARGV[at + 2]
local ev = at + 4 + 2 * tonumber(ARGV[at + 3])
local nevents = tonumber(ARGV[ev])
local fields = {'id', id, 'task', task, 'queue', queue, 'priority', priority, 'state', 'queued',
                'params', params, 'created_at', NOW, 'run_at', run_at}
for i = 10, at - 1 do fields[#fields + 1] = ARGV[i] end
for i = at + 4, ev - 1 do fields[#fields + 1] = ARGV[i] end
ev = ev + 1
if idem ~= '' then
  local existing = redis.call('GET', k_idem(idem))
  if existing then
    local rec = redis.call('HGETALL', k_job(existing))
    if #rec > 0 then return {0, rec} end
  end
end
local others = {}
if sup ~= '' then
  for _, other in ipairs(redis.call('SMEMBERS', k_sup(sup))) do
    local state = redis.call('HGET', k_job(other), 'state')
    if state == 'queued' or state == 'running' then
      others[#others + 1] = other
    else
      redis.call('SREM', k_sup(sup), other)
    end
  end
  table.sort(others)
  redis.call('SADD', k_sup(sup), id)
end
-- Claimed at once for an idle worker that runs its task (as that worker's claim would
-- have: attempt 1, its lease), unless it is not due yet or due jobs of its task, or
-- delayed ones now due, are waiting ahead of it; else queued, and an idle slot woken.
local pushable = nil  -- found out when an idle slot is found
local claimed, lease_until = nil, nil
local function offer(m)
  if pushable == nil then
    pushable = tonumber(run_at) <= tonumber(NOW) and redis.call('EXISTS', k_ready(task)) == 0
    if pushable then
      local due = redis.call('ZRANGE', K_DELAYED, '0', '0', 'WITHSCORES')
      pushable = not (due[2] and tonumber(due[2]) <= tonumber(NOW))
    end
  end
  if not pushable then return nil end
  for _, name in ipairs(m[5]) do
    if name == task then
      lease_until = string.format('%.6f', tonumber(NOW) + m[4])
      local rec = {unpack(fields)}
      for _, v in ipairs({'state', 'running', 'attempt', '1', 'worker', m[3], 'lease_until',
                          lease_until, 'started_at', NOW, 'output_count', '0', 'out_top', '1'}) do
        rec[#rec + 1] = v
      end
      return rec
    end
  end
  return nil
end
local m, rec = wake(offer)
claimed = rec
insert(id, task, queue, priority, run_at, owner, NOW, fields, ev, nevents, claimed, lease_until)
if idem ~= '' then redis.call('SET', k_idem(idem), id) end
if claimed then return {1, others, m[3], lease_until} end
return {1, others}
""",
)

# ARGV: P, now, count, nevents, then nevents (kind, data) pairs shared by every job,
# then per job: id, task, queue, priority, run_at, owner, created_at, nfields, then
# the field pairs. Jobs without idempotency or supersede keys.
ENQUEUE_MANY = _script(
    "enqueue_many",
    _HELPERS,
    """
local count, nevents = tonumber(ARGV[3]), tonumber(ARGV[4])
local ev = 5
local at = ev + 2 * nevents
for _ = 1, count do
  local nfields = tonumber(ARGV[at + 7])
  insert(ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3], ARGV[at + 4], ARGV[at + 5],
         ARGV[at + 6], {unpack(ARGV, at + 8, at + 7 + nfields)}, ev, nevents)
  at = at + 8 + nfields
end
for _ = 1, count do
  if not wake() then break end
end
return count
""",
)

# ARGV: P, now, id -> {hash, position or false}
GET = _script(
    "get",
    LUA_KEYS,
    """
local rec = redis.call('HGETALL', k_job(ARGV[3]))
if #rec == 0 then return {} end
local position = false
local state, queue = nil, 'default'
for i = 1, #rec, 2 do
  if rec[i] == 'state' then state = rec[i + 1] elseif rec[i] == 'queue' then queue = rec[i + 1] end
end
if state == 'queued' then position = redis.call('ZRANK', k_queue(queue), ARGV[3]) end
return {rec, position}
""",
    writes=False,
)

# One decision (see `underway.records.Decision`) is DECISION_FIELDS arguments, then
# its events as (kind, data) pairs:
#   id, expected states (comma-separated), fence worker, fence attempt ('' = no
#   fence), lease_before, state, attempt, cancel_requested ('0'/'1'), run_at, result
#   JSON, error JSON, started_at, finished_at, expires_at, number of events, then the
#   job's record once the decision is applied (the JSON its end is announced with)
#   as the deciding worker predicts it, and the job's cancel_requested, meta, progress
#   and output_count as that prediction found them ('' = None throughout; no
#   prediction: '' for all five), then the job's last progress, written with it.
DECISION_FIELDS = 21

# ARGV: P, now, worker, lease_until, max_jobs, claimer, n_tasks, n_decisions, then the
# task names, then the decisions, then (task, limit) pairs. Decisions are applied
# first, then up to max_jobs jobs are claimed. `claimer` names the calling thread
# ("process/thread"), to be woken when work comes.
# -> {applied flags (1/0), claimed hashes, earliest delayed run_at or ''}
APPLY_AND_CLAIM = _script(
    "apply_and_claim",
    _HELPERS,
    """
local worker, lease_until, max_jobs = ARGV[3], ARGV[4], tonumber(ARGV[5])
local claimer, n, m = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])

local function opt(value)
  if value == '' then return nil end
  return value
end

-- Apply the decision at ARGV[at]; returns where the next one starts, whether it
-- applied, and what it did: 'requeued', 'freed' (left running, ended) or nil.
local function apply(at)
  local id = ARGV[at]
  local nev = tonumber(ARGV[at + 14])
  local nxt = at + 21 + 2 * nev
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'worker', 'attempt', 'lease_until', 'task',
                       'queue', 'priority', 'supersede_key', 'reply', 'cancel_requested',
                       'meta', 'progress', 'output_count')
  local from = f[1]
  if not from then return nxt, false end
  local ok = ARGV[at + 1] == from  -- most decisions expect one state
  if not ok then
    for s in string.gmatch(ARGV[at + 1], '[^,]+') do
      if s == from then ok = true end
    end
  end
  if ok and ARGV[at + 3] ~= '' then
    ok = f[2] == ARGV[at + 2]
      and (f[3] == ARGV[at + 3] or tonumber(f[3]) == tonumber(ARGV[at + 3]))
  end
  if ok and ARGV[at + 4] ~= '' then
    ok = f[4] ~= false and tonumber(f[4]) < tonumber(ARGV[at + 4])
  end
  if not ok then return nxt, false end
  local to = ARGV[at + 5]
  local attempt, cancel, run_at = opt(ARGV[at + 6]), opt(ARGV[at + 7]), opt(ARGV[at + 8])
  local started, finished, expires = opt(ARGV[at + 11]), opt(ARGV[at + 12]), opt(ARGV[at + 13])
  local sets, dels = {'state', to}, {}
  local function put(field, value)
    if value then
      sets[#sets + 1] = field
      sets[#sets + 1] = value
    else
      dels[#dels + 1] = field
    end
  end
  if attempt then put('attempt', attempt) end
  if cancel then put('cancel_requested', cancel) end
  local moves = to ~= 'running'
  if moves then
    put('result', opt(ARGV[at + 9]))
    put('error', opt(ARGV[at + 10]))
    put('worker', nil)
    put('lease_until', nil)
    if to == 'queued' then
      run_at = run_at or NOW
      put('run_at', run_at)
    else
      put('finished_at', finished)
      put('expires_at', expires)
    end
  end
  if started then put('started_at', started) end
  if ARGV[at + 20] ~= '' then put('progress', ARGV[at + 20]) end
  redis.call('HSET', j, unpack(sets))
  if #dels > 0 then redis.call('HDEL', j, unpack(dels)) end
  local task, queue, priority, sup = f[5], f[6], f[7], f[8]
  local did = nil
  if moves or from ~= to then
    leave(id, from, task, queue)
    if to == 'queued' then
      make_ready(id, task, queue, priority, run_at, NOW)
      did = 'requeued'
    elseif to == 'running' then
      redis.call('SADD', k_running(task), id)
      if f[4] then redis.call('ZADD', K_LEASES, f[4], id) end
    else
      if expires then redis.call('ZADD', K_EXPIRY, expires, id) end
      if finished then redis.call('ZADD', K_FINISHED, finished, id) end
      if from == 'running' then did = 'freed' end
    end
    if sup then
      if to == 'queued' or to == 'running' then
        redis.call('SADD', k_sup(sup), id)
      else
        redis.call('SREM', k_sup(sup), id)
      end
    end
    move_state(id, from, to)
  end
  if nev > 0 then
    local now_attempt = attempt or f[3] or '0'
    local events = {}
    for i = at + 21, nxt - 1, 2 do
      events[#events + 1] = entry(ARGV[i], NOW, now_attempt, ARGV[i + 1])
    end
    redis.call('RPUSH', k_events(id), unpack(events))
  end
  if moves and to ~= 'queued' then
    -- The worker's prediction of the record stands if nothing changed the fields that
    -- may change while a job runs (a cancel request, the meta from anywhere; progress
    -- and output from its worker) since the worker claimed it.
    local doc = ARGV[at + 15]
    for k = 10, 13 do
      if doc and (f[k] or '') ~= ARGV[at + 6 + k] then doc = nil end
    end
    if doc == '' then doc = nil end
    changed_to(id, nil, f[9], doc)
  else
    changed(id)
    replied(id, f[9], '')
  end
  return nxt, true, did, task
end

local applied, requeued, freed = {}, 0, {}
local at = 9 + n
for _ = 1, m do
  local nxt, ok, did, task = apply(at)
  applied[#applied + 1] = ok and 1 or 0
  if did == 'requeued' then requeued = requeued + 1 end
  if did == 'freed' then freed[#freed + 1] = task end
  at = nxt
end
local limits, limited = {}, false
for i = at, #ARGV, 2 do
  limits[ARGV[i]] = tonumber(ARGV[i + 1])
  limited = true
end
-- Requeued jobs are work for idle claimers; an end frees room under a concurrency
-- limit (unknown here when the caller claims nothing), which an idle claimer may take.
for _ = 1, requeued do
  if not wake() then break end
end
if requeued == 0 and #freed > 0 then
  local room = max_jobs <= 0
  for _, task in ipairs(freed) do
    if limits[task] then room = true end
  end
  if room then wake() end
end
if max_jobs <= 0 then return {applied, {}, ''} end
-- Delayed jobs that are due become ready (looked for only when the earliest is due).
local nxt = redis.call('ZRANGE', K_DELAYED, '0', '0', 'WITHSCORES')
if nxt[2] and tonumber(nxt[2]) <= tonumber(NOW) then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', NOW, 'LIMIT', '0', '500')) do
    local f = redis.call('HMGET', k_job(id), 'task', 'priority')
    if f[1] then redis.call('ZADD', k_ready(f[1]), f[2], id) end
    redis.call('ZREM', K_DELAYED, id)
  end
  nxt = nil
end
-- `unsure`: tasks whose ready set may hold more than was read here.
local room, candidates, unsure = {}, {}, {}
local most = tostring(max_jobs - 1)  -- the last index of a full read
for i = 9, 8 + n do
  local task = ARGV[i]
  local r = max_jobs
  if limits[task] then
    r = math.min(r, limits[task] - redis.call('SCARD', k_running(task)))
  end
  room[task] = r
  if r > 0 then
    local stop = most
    if r ~= max_jobs then stop = tostring(r - 1) end
    local got = redis.call('ZRANGE', k_ready(task), '0', stop, 'WITHSCORES')
    for k = 1, #got, 2 do
      candidates[#candidates + 1] = {tonumber(got[k + 1]), got[k], task}
    end
    if #got >= 2 * r then unsure[#unsure + 1] = task end
  else
    unsure[#unsure + 1] = task
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
    local f = redis.call('HMGET', j, 'queue', 'attempt', 'out_top', 'progress')
    redis.call('ZREM', k_queue(f[1]), id)
    local attempt = '1'
    if f[2] and f[2] ~= '0' then attempt = tostring(tonumber(f[2]) + 1) end
    local sets = {'state', 'running', 'attempt', attempt, 'worker', worker,
                  'lease_until', lease_until, 'started_at', NOW, 'output_count', '0'}
    -- A fresh output segment for this attempt: a new attempt number has no list yet;
    -- one given back and claimed again may have had one.
    if not f[3] or tonumber(attempt) > tonumber(f[3]) then
      sets[#sets + 1] = 'out_top'
      sets[#sets + 1] = attempt
    else
      redis.call('DEL', k_output(id, attempt))
    end
    redis.call('HSET', j, unpack(sets))
    if f[4] then redis.call('HDEL', j, 'progress') end
    move_state(id, 'queued', 'running')
    redis.call('ZADD', K_LEASES, lease_until, id)
    redis.call('SADD', k_running(task), id)
    push_event(id, 'state', attempt, '{"state":"running","attempt":' .. attempt .. '}')
    local rec = redis.call('HGETALL', j)
    changed_to(id, rec)
    out[#out + 1] = rec
  end
end
if #out < max_jobs then
  local t = redis.call('TIME')
  redis.call('ZADD', K_IDLE, tonumber(t[1]) + IDLE_TTL, claimer)
else
  redis.call('ZREM', K_IDLE, claimer)
  -- More may be waiting: pass the baton to another idle slot rather than leave it asleep.
  -- A candidate left over says so; so may a ready set read only in part.
  local more = #candidates > #out
  for _, task in ipairs(unsure) do
    if more then break end
    more = redis.call('ZCARD', k_ready(task)) > 0
  end
  if more then wake() end
end
if nxt == nil then nxt = redis.call('ZRANGE', K_DELAYED, '0', '0', 'WITHSCORES') end
return {applied, out, nxt[2] or ''}
""",
)

# ARGV: P, now, worker, lease_until, then (id, attempt) pairs
# -> {ids still held, those among them with a cancel request}
RENEW = _script(
    "renew",
    LUA_KEYS,
    """
local worker, lease_until = ARGV[3], ARGV[4]
local held, cancelled = {}, {}
for i = 5, #ARGV, 2 do
  local id = ARGV[i]
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'worker', 'attempt', 'cancel_requested')
  if f[1] == 'running' and f[2] == worker and tonumber(f[3]) == tonumber(ARGV[i + 1]) then
    redis.call('HSET', j, 'lease_until', lease_until)
    redis.call('ZADD', K_LEASES, lease_until, id)
    held[#held + 1] = id
    if f[4] == '1' then cancelled[#cancelled + 1] = id end
  end
end
return {held, cancelled}
""",
)

_FENCED = """
local id, worker, attempt = ARGV[3], ARGV[4], ARGV[5]
local j = k_job(id)
local f = redis.call('HMGET', j, 'state', 'worker', 'attempt', 'output_count')
if f[1] ~= 'running' or f[2] ~= worker
    or (f[3] ~= attempt and tonumber(f[3]) ~= tonumber(attempt)) then
  return 0
end
"""

# ARGV: P, now, id, fence worker, fence attempt, progress JSON -> 1, or 0 when not held
PROGRESS = _script(
    "progress",
    _HELPERS,
    _FENCED
    + """
redis.call('HSET', j, 'progress', ARGV[6])
push_event(id, 'progress', attempt, ARGV[6])
changed(id)
return 1
""",
)

# ARGV: P, now, id, fence worker, fence attempt, then (kind, data) pairs
# -> 1, or 0 when not held
APPEND = _script(
    "append",
    _HELPERS,
    _FENCED
    + """
local first = tonumber(f[4] or '0')
local idx = first
local events, items = {}, {}
local function flush()
  -- unpack() is bounded by Lua's C stack, so long batches go in slices
  if #events > 0 then redis.call('RPUSH', k_events(id), unpack(events)) end
  if #items > 0 then redis.call('RPUSH', k_output(id, attempt), unpack(items)) end
  events, items = {}, {}
end
for i = 6, #ARGV, 2 do
  local kind = ARGV[i]
  if kind == 'output' then
    events[#events + 1] = 'output|' .. NOW .. '|' .. attempt .. '|' .. idx .. '|'
    items[#items + 1] = ARGV[i + 1]
    idx = idx + 1
  else
    events[#events + 1] = entry(kind, NOW, attempt, ARGV[i + 1])
  end
  if #events >= 1000 then flush() end
end
flush()
if idx > first then redis.call('HSET', j, 'output_count', idx) end
changed(id)
return 1
""",
)

# ARGV: P, now, limit -> hashes of running jobs whose lease ran out before now
EXPIRED = _script(
    "expired",
    LUA_KEYS,
    """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                                tonumber(ARGV[3]))) do
  local j = k_job(id)
  local f = redis.call('HMGET', j, 'state', 'lease_until')
  if f[1] == 'running' and f[2] and tonumber(f[2]) < tonumber(ARGV[2]) then
    out[#out + 1] = redis.call('HGETALL', j)
  end
end
return out
""",
    writes=False,
)

# ARGV: P, now, id -> 1 when it existed
DELETE = _script(
    "delete",
    _HELPERS,
    """
return erase(ARGV[3])
""",
)

# ARGV: P, now, index ('expiry' or 'finished'), bound, batch -> the ids erased
PURGE = _script(
    "purge",
    _HELPERS,
    """
local index = K_EXPIRY
if ARGV[3] == 'finished' then index = K_FINISHED end
local ids = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. ARGV[4], 'LIMIT', 0,
                       tonumber(ARGV[5]))
for _, id in ipairs(ids) do erase(id) end
return ids
""",
)

# ARGV: P, now, id, after, limit -> the entries; output entries end with their item
EVENTS = _script(
    "events",
    LUA_KEYS,
    """
local id, after, limit = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local entries = redis.call('LRANGE', k_events(id), after, after + limit - 1)
local spans, outputs = {}, {}
for i, e in ipairs(entries) do
  if string.sub(e, 1, 7) == 'output|' then
    local attempt, idx = string.match(e, '^output|[^|]*|(%d+)|(%d+)|')
    idx = tonumber(idx)
    local s = spans[attempt]
    if s == nil then
      spans[attempt] = {idx, idx}
    else
      if idx < s[1] then s[1] = idx end
      if idx > s[2] then s[2] = idx end
    end
    outputs[#outputs + 1] = {i, attempt, idx}
  end
end
local items = {}
for attempt, s in pairs(spans) do
  items[attempt] = redis.call('LRANGE', k_output(id, attempt), s[1], s[2])
end
for _, o in ipairs(outputs) do
  local i, attempt, idx = o[1], o[2], o[3]
  local item = items[attempt][idx - spans[attempt][1] + 1] or 'null'
  entries[i] = entries[i] .. item
end
return entries
""",
    writes=False,
)

# ARGV: P, now, id, attempt ('' = the job's latest), after, limit -> output items
OUTPUT = _script(
    "output",
    LUA_KEYS,
    """
local id, attempt = ARGV[3], ARGV[4]
local after, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
if attempt == '' then
  attempt = redis.call('HGET', k_job(id), 'attempt')
  if not attempt then return {} end
end
return redis.call('LRANGE', k_output(id, attempt), after, after + limit - 1)
""",
    writes=False,
)

# ARGV: P, now, id, changes JSON -> 1 when the job exists
UPDATE_META = _script(
    "update_meta",
    _HELPERS,
    """
-- The caller merges (Lua's cjson would rewrite the other keys: an empty list as an
-- object, a float to 14 digits): ARGV[4] is the meta it merged into, ARGV[5] the
-- result. Written only if the meta is still ARGV[4]; else its meta now, to merge into.
local key = k_job(ARGV[3])
if redis.call('EXISTS', key) == 0 then return 0 end
local current, reply = unpack(redis.call('HMGET', key, 'meta', 'reply'))
if (current or '') ~= ARGV[4] then return {current or ''} end
redis.call('HSET', key, 'meta', ARGV[5])
changed(ARGV[3])
replied(ARGV[3], reply, '')
return 1
""",
)


def _library(name: str) -> str:
    """Every script as a function of one library: the helpers are defined once, when
    Redis loads it, instead of at every call (an EVAL's text runs whole each time);
    each call sets the prefix, the time and the arguments they read."""
    helpers = _HELPER_DEFINITIONS.replace("local NOW = ARGV[2]", "local NOW = nil", 1)
    parts = [
        f"#!lua name={name}\n",
        "local ARGV = nil\n",
        LUA_KEYS_LIBRARY,
        helpers,
        "local function enter(args)\n  ARGV = args\n  NOW = args[2]\n"
        "  if args[1] ~= P then set_prefix(args[1]) end\nend\n",
    ]
    for script in _SCRIPTS:
        flags = "" if script.writes else ", flags = {'no-writes'}"
        parts.append(
            f"redis.register_function{{function_name = '{name}_{script.name}', "
            f"callback = function(_, args)\nenter(args)\n{script.body}end{flags}}}\n"
        )
    return "".join(parts)


# Named after its text, so that processes running different versions of these scripts
# against one Redis each find their own.
LIBRARY_NAME = "underway_" + hashlib.sha1(_library("").encode()).hexdigest()[:16]
LIBRARY = _library(LIBRARY_NAME)
for _each in _SCRIPTS:
    _each.function = f"{LIBRARY_NAME}_{_each.name}"
