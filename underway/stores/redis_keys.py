"""Every Redis key and channel the Redis store uses, in one place.

Python builds names with `Keys`; the Lua scripts build the same names with the
functions of `LUA_KEYS`, generated here from the same constants, so the layout
cannot drift between the two. All names start with the store's prefix and the
layout version (`underway:v2:` by default): a store whose stored format changes
incompatibly bumps `LAYOUT`, so it never reads what an older one wrote.

Layout (`{id}` is a job id, `{n}` an attempt)::

    job:{id}          hash    the job's fields (absent field = None); `out_top` is the
                              highest attempt ever claimed (for erasing its output)
    ev:{id}           list    its events; the event with seq N is element N-1, stored
                              as `kind|at|attempt|idx|data` (`idx` only for output)
    out:{id}:{n}      list    the output items (JSON) of attempt n; item i is
                              element i (an output event leaves `data` empty and
                              points here, so an item is stored once)
    all               zset    every job id (score 0: ordered by id)
    task:{name}       zset    ids by task          (score 0)
    owner:{name}      zset    ids by owner         (score 0)
    state:{state}     zset    ids by state         (score 0)
    queue:{name}      zset    queued ids, score = priority (ZRANK = position)
    ready:{task}      zset    queued ids that are due, score = priority
    delayed           zset    queued ids not due yet, score = run_at
    running:{task}    set     running ids (per-task concurrency limits)
    leases            zset    running ids, score = lease_until
    expiry            zset    finished ids, score = expires_at
    finished          zset    finished ids, score = finished_at
    idem:{key}        string  the id of the job submitted with that idempotency key
    sup:{key}         set     active ids submitted with that supersede key
    epoch             string  when this data began (epoch seconds): written by the first
                              user, so that a Redis that lost its data is noticed
    workers           hash    worker id -> {"tasks": [...], "until": epoch s} (heartbeats)
    idlers            zset    worker slots that found nothing to claim, each a JSON list
                              [process, thread, worker, lease seconds, tasks a
                              submission may claim a job of for it, and, for a slot
                              that reads a wake channel of its own, "{process}:{thread}"],
                              score = when that stops being true (Redis clock)

Channels: `wake:{process}` (new work for one idle slot of that store instance; the
message names the thread, and, after a newline, carries the record of a job the
submission claimed for that slot's worker, if it did), `wake:{process}:{thread}`
(the same, for a slot that reads its own; see `redis_slots`) and `ch:{id}` (the job
changed; subscribed only while someone in a process waits on the job). A claim's
or an end's message on `ch:{id}` carries the job's hash as a JSON list of fields
and values (sent only while the channel has a subscriber); other messages are
empty.
"""

from __future__ import annotations

LAYOUT = "v2"  # bump when the stored format changes incompatibly
JOB = "job:"
EVENTS = "ev:"
OUTPUT = "out:"
ALL = "all"
BY_TASK = "task:"
BY_OWNER = "owner:"
BY_STATE = "state:"
QUEUE = "queue:"
READY = "ready:"
DELAYED = "delayed"
RUNNING = "running:"
LEASES = "leases"
EXPIRY = "expiry"
FINISHED = "finished"
IDEMPOTENCY = "idem:"
SUPERSEDE = "sup:"
IDLE = "idlers"
EPOCH = "epoch"
WORKERS = "workers"
WAKE_CHANNEL = "wake:"
JOB_CHANNEL = "ch:"

IDLE_TTL = 10  # seconds; longer than the longest idle wait, so a waiting slot stays known


class Keys:
    """Key and channel names under one prefix."""

    def __init__(self, prefix: str) -> None:
        base = prefix if prefix.endswith(":") else prefix + ":"
        self.prefix = f"{base}{LAYOUT}:"
        p = self.prefix
        self.all = p + ALL
        self.delayed = p + DELAYED
        self.leases = p + LEASES
        self.expiry = p + EXPIRY
        self.finished = p + FINISHED
        self.idle = p + IDLE
        self.epoch = p + EPOCH
        self.workers = p + WORKERS
        self.job_channel_prefix = p + JOB_CHANNEL

    def job(self, job_id: str) -> str:
        return self.prefix + JOB + job_id

    def events(self, job_id: str) -> str:
        return self.prefix + EVENTS + job_id

    def output(self, job_id: str, attempt: int) -> str:
        return f"{self.prefix}{OUTPUT}{job_id}:{attempt}"

    def by_task(self, task: str) -> str:
        return self.prefix + BY_TASK + task

    def by_owner(self, owner: str) -> str:
        return self.prefix + BY_OWNER + owner

    def by_state(self, state: str) -> str:
        return self.prefix + BY_STATE + state

    def running(self, task: str) -> str:
        return self.prefix + RUNNING + task

    def queue(self, queue: str) -> str:
        return self.prefix + QUEUE + queue

    def idempotency(self, key: str) -> str:
        return self.prefix + IDEMPOTENCY + key

    def wake_channel(self, process: str) -> str:
        return self.prefix + WAKE_CHANNEL + process

    def job_channel(self, job_id: str) -> str:
        return self.job_channel_prefix + job_id


# Lua side of the same layout. Every script receives the prefix as ARGV[1]. The key
# builders and constants are written once, for both ways the scripts run: as a script
# of its own (EVAL, which defines them at every call: `LUA_KEYS`), and in the function
# library (defined once when Redis loads it, the constants set for each call's prefix
# by `set_prefix`: `LUA_KEYS_LIBRARY`).
_LUA_KEY_FUNCTIONS = f"""
local function k_job(id) return P .. '{JOB}' .. id end
local function k_events(id) return P .. '{EVENTS}' .. id end
local function k_output(id, n) return P .. '{OUTPUT}' .. id .. ':' .. n end
local function k_task(t) return P .. '{BY_TASK}' .. t end
local function k_owner(o) return P .. '{BY_OWNER}' .. o end
local function k_state(s) return P .. '{BY_STATE}' .. s end
local function k_queue(q) return P .. '{QUEUE}' .. q end
local function k_ready(t) return P .. '{READY}' .. t end
local function k_running(t) return P .. '{RUNNING}' .. t end
local function k_idem(key) return P .. '{IDEMPOTENCY}' .. key end
local function k_sup(key) return P .. '{SUPERSEDE}' .. key end
local function c_job(id) return P .. '{JOB_CHANNEL}' .. id end
"""
_LUA_KEY_CONSTANTS = {
    "K_ALL": ALL,
    "K_DELAYED": DELAYED,
    "K_LEASES": LEASES,
    "K_EXPIRY": EXPIRY,
    "K_FINISHED": FINISHED,
    "K_IDLE": IDLE,
    "C_WAKE": WAKE_CHANNEL,
}

LUA_KEYS = (
    "\nlocal P = ARGV[1]"
    + _LUA_KEY_FUNCTIONS
    + "".join(f"local {name} = P .. '{suffix}'\n" for name, suffix in _LUA_KEY_CONSTANTS.items())
    + f"local IDLE_TTL = {IDLE_TTL}\n"
)

LUA_KEYS_LIBRARY = (
    "\nlocal P = nil\n"
    + f"local {', '.join(_LUA_KEY_CONSTANTS)}\n"
    + _LUA_KEY_FUNCTIONS
    + f"local IDLE_TTL = {IDLE_TTL}\n"
    + "local function set_prefix(prefix)\n  P = prefix\n"
    + "".join(f"  {name} = P .. '{suffix}'\n" for name, suffix in _LUA_KEY_CONSTANTS.items())
    + "end\n"
)
