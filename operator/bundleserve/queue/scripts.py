"""Lua scripts: every state change of a task is one atomic script, so a crash between two commands cannot lose a
task or finish it twice. The rules they share: a terminal status is never overwritten; the stream entry that
carried the task is acknowledged and deleted in the same step that moves the task on (so XLEN = pending + in flight);
a completion, requeue or lease extension is fenced on the lease (`worker` and `attempts` as the pick-up wrote them),
so a stale holder whose task was reclaimed changes nothing; a terminal record keeps no `request` (up to the payload
limit in size), and no `callback` (its credentials) once no callback delivery is pending.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from bundleserve.queue.pipelining import AutoPipeline

_TERMINAL = """
local function terminal(s) return s == 'SUCCESS' or s == 'FAILURE' or s == 'EXPIRED' end
-- The entry leaves the backlog: its bytes ('b', set at XADD) leave the endpoint's byte counter (`keys.byte_counter`,
-- the stream's sibling key) in the same step. Idempotent: an entry already deleted counts nothing.
local function done(stream, group, entry)
  redis.call('XACK', stream, group, entry)
  local found = redis.call('XRANGE', stream, entry, entry)
  if found[1] then
    local fields = found[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 'b' then
        redis.call('DECRBY', (string.gsub(stream, ':stream$', ':bytes')), fields[i + 1])
      end
    end
  end
  redis.call('XDEL', stream, entry)
end
-- A task finished at pick-up (expired, out of attempts) with a callback target: its delivery job goes into the
-- endpoint's outbox in the same step (the outbox is the stream's sibling key, `keys.callback_outbox`), so the
-- target's credentials leave the record once the delivery settles; a crash before a separate enqueue used to leave
-- them there until the record's TTL with no delivery ever made.
local function enqueue_at_pickup(stream, key, task_id, callback)
  if callback == '' or redis.call('HGET', key, 'callback_status') ~= 'pending' then return end
  local outbox = string.gsub(stream, ':stream$', ':callbacks')
  local clock = redis.call('TIME')
  redis.call('ZADD', outbox, 'NX', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000), task_id)
end
-- A terminal record keeps what status reads need: the request goes, and the callback target once none is pending.
local function strip(key)
  if redis.call('HGET', key, 'callback_status') == 'pending' then
    redis.call('HDEL', key, 'request')
  else
    redis.call('HDEL', key, 'request', 'callback')
  end
end
-- The lease check: the task is STARTED by `worker` in attempt `attempt` ('' = any attempt of that worker).
local function holds(key, worker, attempt)
  local cur = redis.call('HMGET', key, 'status', 'worker', 'attempts')
  return cur[1] == 'STARTED' and cur[2] == worker and (attempt == '' or cur[3] == attempt)
end
"""


_START_ONE = (
    _TERMINAL
    + """
-- Decide for one delivered entry: run it (attempts + 1, STARTED) or finish it without running.
-- Returns {entry, task_id, outcome, attempts, request, callback}; outcome run|skip|gone|expired|failed.
local function start_one(stream, dead, key, entry, task_id, group, worker, now_text, request_ttl, max_attempts,
                         result_ttl, channel)
  local now = tonumber(now_text)
  local cur = redis.call('HMGET', key, 'status', 'created_at', 'attempts', 'request', 'traceback', 'callback',
                        'request_ttl')
  local callback = cur[6] or ''
  local ttl = tonumber(request_ttl)
  if cur[7] and tonumber(cur[7]) < ttl then ttl = tonumber(cur[7]) end  -- a task's own TTL only shortens it
  if not cur[1] then
    done(stream, group, entry)
    return {entry, task_id, 'gone', 0, '', ''}
  elseif terminal(cur[1]) then
    done(stream, group, entry)
    return {entry, task_id, 'skip', 0, '', ''}
  elseif now - tonumber(cur[2]) > ttl then
    redis.call('HSET', key, 'status', 'EXPIRED', 'finished_at', now_text,
      'traceback', 'the task waited longer than requestTTLSeconds (' .. ttl .. ' s) before a worker picked it up')
    redis.call('EXPIRE', key, result_ttl)
    strip(key)
    enqueue_at_pickup(stream, key, task_id, callback)
    done(stream, group, entry)
    redis.call('PUBLISH', channel, task_id)
    return {entry, task_id, 'expired', 0, '', callback}
  elseif tonumber(cur[3] or '0') >= tonumber(max_attempts) then
    local reason = cur[5] or ('no attempt finished: the worker running it was lost ' .. (cur[3] or '0') .. ' times')
    redis.call('HSET', key, 'status', 'FAILURE', 'finished_at', now_text, 'traceback', reason)
    redis.call('EXPIRE', key, result_ttl)
    strip(key)
    enqueue_at_pickup(stream, key, task_id, callback)
    done(stream, group, entry)
    redis.call('XADD', dead, 'MAXLEN', '~', '100000', '*', 't', task_id, 'reason', 'max_attempts')
    redis.call('PUBLISH', channel, task_id)
    return {entry, task_id, 'failed', 0, '', callback}
  end
  local attempts = redis.call('HINCRBY', key, 'attempts', 1)
  redis.call('HSET', key, 'status', 'STARTED', 'started_at', now_text, 'worker', worker)
  return {entry, task_id, 'run', attempts, cur[4], callback}
end
"""
)

#: Pick up entries delivered by a blocking XREADGROUP. KEYS: stream, dead, task_1..task_n. ARGV: group, consumer,
#: now, request_ttl, max_attempts, result_ttl, channel, then (entry_id, task_id) pairs. Returns start_one's arrays.
START = (
    _START_ONE
    + """
local out = {}
for i = 1, #KEYS - 2 do
  out[i] = start_one(KEYS[1], KEYS[2], KEYS[i + 2], ARGV[6 + 2 * i], ARGV[7 + 2 * i], ARGV[1], ARGV[2], ARGV[3],
                     ARGV[4], ARGV[5], ARGV[6], ARGV[7])
end
return out
"""
)

_CLAIM_NEW = (
    _START_ONE
    + """
-- Read up to `count` new entries without blocking and pick each up (task keys derived from the prefix).
local function claim_new(stream, dead, group, consumer, count, prefix, now_text, request_ttl, max_attempts, result_ttl,
                         channel, worker)
  local out = {}
  if tonumber(count) < 1 then return out end
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>')
  if not reply then return out end
  for _, item in ipairs(reply[1][2]) do
    local entry, fields = item[1], item[2]
    local task_id = ''
    for j = 1, #fields, 2 do if fields[j] == 't' then task_id = fields[j + 1] end end
    out[#out + 1] = start_one(stream, dead, prefix .. task_id, entry, task_id, group, worker or consumer, now_text,
                              request_ttl, max_attempts, result_ttl, channel)
  end
  return out
end
"""
)

#: Read up to `count` new entries (non-blocking) and pick them up, in one round trip. KEYS: stream, dead.
#: ARGV: group, consumer, now, request_ttl, max_attempts, result_ttl, channel, count, task key prefix.
#: Returns {'' | the stream's last id when nothing was claimed, entries as start_one returns them}.
#: The task keys are derived here, so these scripts need a single-node Redis (not Redis Cluster).
CLAIM = (
    _CLAIM_NEW
    + """
local out = claim_new(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[8], ARGV[9], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if #out > 0 then return {'', out} end
-- Nothing new: the stream's last id, from which the caller waits (XREAD BLOCK, a read: no AOF write, no fsync).
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for j = 1, #info, 2 do
  if info[j] == 'last-generated-id' then return {info[j + 1], out} end
end
return {'0-0', out}
"""
)

#: Store a task and append it. KEYS: task, stream, dead. ARGV: task_id, record ttl, claim consumer ('' = none), group,
#: now, request_ttl, max_attempts, result_ttl, channel, task key prefix, worker (the lease name of a claim),
#: backlog cap (0 = none), the task's bytes, the backlog byte cap (0 = none), then field, value, ...
#: With a claim consumer (a replica with an idle slot submitting), the next entry is picked up for it in the same
#: step (at light load: the task just added), sparing a wake-up and a second write. The claim consumer is the
#: replica's submission consumer (not its read-loop one), so entries of a submission whose reply was lost can be told
#: apart and handed back. Returns {entry id, claimed entries}, or {'full', {}} with nothing stored when the stream
#: already holds `backlog cap` tasks, or {'full-bytes', {}} when the endpoint's unfinished tasks would hold more than
#: the byte cap (the counter `keys.byte_counter`: what a shared Redis holds for this endpoint's backlog).
SUBMIT = (
    _CLAIM_NEW
    + """
if tonumber(ARGV[12]) > 0 and redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[12]) then return {'full', {}} end
local counter = (string.gsub(KEYS[2], ':stream$', ':bytes'))
if tonumber(ARGV[14]) > 0 and (tonumber(redis.call('GET', counter)) or 0) + tonumber(ARGV[13]) > tonumber(ARGV[14]) then
  return {'full-bytes', {}}
end
redis.call('HSET', KEYS[1], 'bytes', ARGV[13], unpack(ARGV, 15))
redis.call('EXPIRE', KEYS[1], ARGV[2])
local entry = redis.call('XADD', KEYS[2], '*', 't', ARGV[1], 'b', ARGV[13])
redis.call('INCRBY', counter, ARGV[13])
if ARGV[3] == '' then return {entry, {}} end
local ok, claimed = pcall(claim_new, KEYS[2], KEYS[3], ARGV[4], ARGV[3], 1, ARGV[10], ARGV[5], ARGV[6], ARGV[7],
                          ARGV[8], ARGV[9], ARGV[11])
if ok then return {entry, claimed} end
return {entry, {}}
"""
)

#: Take back a submission whose durability could not be confirmed, so it never runs. KEYS: task, stream.
#: ARGV: group, entry id, worker ('' = none). Withdrawn when still PENDING, or STARTED by `worker`'s submission claim
#: (not yet run: the caller has not handed it to a slot). Returns 1 if withdrawn (or gone), 0 if it already runs
#: elsewhere or finished (then it will finish, and the submission is answered as accepted).
WITHDRAW = (
    _TERMINAL
    + """
local cur = redis.call('HMGET', KEYS[1], 'status', 'worker')
if cur[1] and cur[1] ~= 'PENDING' and not (cur[1] == 'STARTED' and ARGV[3] ~= '' and cur[2] == ARGV[3]) then
  return 0
end
redis.call('DEL', KEYS[1])
done(KEYS[2], ARGV[1], ARGV[2])
return 1
"""
)

#: Terminal transition, then (under load) the next task for the same slot. KEYS: task, stream, dead, callback outbox.
#: A record left with `callback_status` pending gets its delivery job in the outbox in the same step (due now).
#: ARGV: group, entry_id, task_id, channel, result_ttl, dead_reason ('' = not dead-lettered), claim count, consumer,
#: now, request_ttl, max_attempts, task key prefix, lease worker, lease attempt, then field, value, ... (must include
#: status). Fenced: only the lease holder finishes the task; a stale holder leaves record and entry to the new one.
#: Returns {1 if this call finished the task else 0, claimed entries as in CLAIM}.
COMPLETE = (
    _CLAIM_NEW
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
local made = 0
if not cur or terminal(cur) then
  done(KEYS[2], ARGV[1], ARGV[2])
elseif holds(KEYS[1], ARGV[13], ARGV[14]) then
  done(KEYS[2], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[1], unpack(ARGV, 15))
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  strip(KEYS[1])
  if ARGV[6] ~= '' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 't', ARGV[3], 'reason', ARGV[6])
  end
  if redis.call('HGET', KEYS[1], 'callback_status') == 'pending' then
    local clock = redis.call('TIME')
    redis.call('ZADD', KEYS[4], 'NX', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000), ARGV[3])
  end
  redis.call('PUBLISH', ARGV[4], ARGV[3])
  made = 1
end
return {made, claim_new(KEYS[2], KEYS[3], ARGV[1], ARGV[8], ARGV[7], ARGV[12], ARGV[9], ARGV[10], ARGV[11], ARGV[5],
                        ARGV[4])}
"""
)

#: Put a started task back in the queue (a retryable failure, or a worker draining). KEYS: task, stream.
#: ARGV: group, entry_id, task_id, attempts delta (0 for a retry, -1 for a release), lease worker, lease attempt
#: ('' = any attempt of that worker), field, value, ... Fenced like COMPLETE.
REQUEUE = (
    _TERMINAL
    + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur or terminal(cur) then
  done(KEYS[2], ARGV[1], ARGV[2])
  return 0
end
if not holds(KEYS[1], ARGV[5], ARGV[6]) then return 0 end
done(KEYS[2], ARGV[1], ARGV[2])
if tonumber(ARGV[4]) ~= 0 then redis.call('HINCRBY', KEYS[1], 'attempts', ARGV[4]) end
redis.call('HSET', KEYS[1], 'status', 'PENDING', unpack(ARGV, 7))
local size = redis.call('HGET', KEYS[1], 'bytes') or '0'
redis.call('XADD', KEYS[2], '*', 't', ARGV[3], 'b', size)
redis.call('INCRBY', (string.gsub(KEYS[2], ':stream$', ':bytes')), size)
return 1
"""
)

#: Claim due callback deliveries with a lease. KEYS: outbox. ARGV: now_ms, lease_ms, count.
#: Each claimed task id is re-scored to now + lease, so no other replica picks it up while this attempt runs.
CLAIM_CALLBACKS = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, task_id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), task_id)
end
return due
"""

#: Record one callback attempt, fenced on the attempt number (a stale lease holder changes nothing).
#: KEYS: task, outbox. ARGV: task_id, attempt, next due ms ('' = settled: remove the job), field, value, ...
#: Returns 1 if recorded, 0 if the attempt was already recorded or the record is gone (the job is then dropped).
RECORD_CALLBACK = """
local cur = redis.call('HMGET', KEYS[1], 'callback_status', 'callback_attempts')
if cur[1] ~= 'pending' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
if (tonumber(cur[2]) or 0) ~= tonumber(ARGV[2]) - 1 then return 0 end
redis.call('HSET', KEYS[1], 'callback_attempts', ARGV[2], unpack(ARGV, 4))
if ARGV[3] == '' then
  -- settled: the target and its credentials are not needed any more
  redis.call('HDEL', KEYS[1], 'callback')
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
end
return 1
"""

#: Add a callback job for a finished task not yet settled. KEYS: task, outbox. ARGV: task_id, due ms.
ENQUEUE_CALLBACK = """
local cur = redis.call('HMGET', KEYS[1], 'status', 'callback_status')
if not cur[1] or cur[2] == 'delivered' or cur[2] == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'callback_status', 'pending')
return redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
"""

#: Extend the leases of running tasks: reset each entry's idle time (XCLAIM JUSTID to `consumer`), so a reclaim never
#: takes a task whose worker is alive; fenced, so a stale holder does not take back an entry reclaimed by another.
#: KEYS: stream, task_1..task_n. ARGV: group, consumer, lease worker, then (entry id, attempt) pairs.
#: Returns one 1 (extended) or 0 (lease lost) per task.
TOUCH = (
    _TERMINAL
    + """
local out = {}
for i = 2, #KEYS do
  local entry, attempt = ARGV[2 * i], ARGV[2 * i + 1]
  if holds(KEYS[i], ARGV[3], attempt) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, entry, 'JUSTID')
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

#: Remove consumers of the group that hold no pending entry and were idle longer than ARGV[2] ms (dead replicas;
#: a live one is re-created by its next read). Checked and deleted in one step, so no entry is lost with a consumer.
#: KEYS: stream. ARGV: group, min idle ms. Returns the number removed.
PRUNE_CONSUMERS = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for j = 1, #consumer, 2 do info[consumer[j]] = consumer[j + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

#: Update fields of a record that still exists (never resurrects an expired one). KEYS: task. ARGV: field, value, ...
UPDATE_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


@dataclass(frozen=True)
class Script:
    """A Lua script run by SHA, re-loaded transparently when the server lost its script cache (a restart)."""

    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, redis: aioredis.Redis | AutoPipeline, keys: Sequence[str], args: Sequence[Any]) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await redis.execute_command(*command)
        except NoScriptError:
            client = redis.redis if isinstance(redis, AutoPipeline) else redis
            await client.script_load(self.source)
            return await redis.execute_command(*command)


submit = Script(SUBMIT)
withdraw = Script(WITHDRAW)
touch = Script(TOUCH)
prune_consumers = Script(PRUNE_CONSUMERS)
start = Script(START)
claim = Script(CLAIM)
complete = Script(COMPLETE)
requeue = Script(REQUEUE)
update_if_exists = Script(UPDATE_IF_EXISTS)
claim_callbacks = Script(CLAIM_CALLBACKS)
record_callback = Script(RECORD_CALLBACK)
enqueue_callback = Script(ENQUEUE_CALLBACK)
ALL = (
    submit,
    withdraw,
    start,
    claim,
    complete,
    requeue,
    touch,
    prune_consumers,
    update_if_exists,
    claim_callbacks,
    record_callback,
    enqueue_callback,
)


async def load_all(redis: aioredis.Redis) -> None:
    for script in ALL:
        await redis.script_load(script.source)
