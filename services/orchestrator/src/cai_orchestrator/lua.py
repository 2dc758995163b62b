"""The run engine's Lua scripts. Each touches the keys of one thread only (one cluster slot).

Every key comes in KEYS, built by `keys.py`; a run the script finds by id (the thread's active or
next run) is reached through the thread's run-key prefix passed in ARGV. The queue is never
touched here: appending a dispatched run to it is the caller's second, idempotent step.
"""

# The run is recorded and the thread's multitask strategy decided, atomically.
# KEYS: 1 thread, 2 pending, 3 thread runs, 4 run, 5 idempotency key
# ARGV: 1 run_id, 2 tenant, 3 strategy, 4 now_iso, 5 score, 6 'create' a missing thread or not,
#       7 run fields (json), 8 idempotency ttl (0: no key), 9 run-key prefix, 10 thread_id,
#       11 '1' if the run is stateless (the thread it creates is temporary)
# Returns {outcome, run_id, run asked to stop}; outcome: existing | no_thread (none, or being
# deleted) | temporary (a stateless run's thread) | conflict | dispatched (the thread's active
# run now) | queued (waits behind the active run).
# A thread with an active run never expires: its keys lose their TTL here and get it back when
# the thread goes idle (FINISH_RUN).
CREATE_RUN = """
if ARGV[8] ~= '0' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {'existing', existing, ''} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'existing', ARGV[1], ''} end
local owner = redis.call('HGET', KEYS[1], 'tenant')
if not owner then
  if ARGV[6] ~= 'create' then return {'no_thread', '', ''} end
  redis.call('HSET', KEYS[1], 'thread_id', ARGV[10], 'tenant', ARGV[2],
    'created_at', ARGV[4], 'updated_at', ARGV[4], 'metadata', '{}', 'status', 'idle',
    'active_run', '', 'temporary', ARGV[11])
elseif owner ~= ARGV[2] or redis.call('HGET', KEYS[1], 'deleting') == '1' then
  return {'no_thread', '', ''}
elseif redis.call('HGET', KEYS[1], 'temporary') == '1' then
  return {'temporary', '', ''}
end
local active = redis.call('HGET', KEYS[1], 'active_run')
local outcome = 'dispatched'
local interrupts = ''
if active and active ~= '' then
  local active_status = redis.call('HGET', ARGV[9] .. active, 'status')
  if active_status == 'pending' or active_status == 'running' then
    if ARGV[3] == 'reject' then return {'conflict', active, ''} end
    if ARGV[3] == 'enqueue' then
      redis.call('RPUSH', KEYS[2], ARGV[1])
    else
      redis.call('LPUSH', KEYS[2], ARGV[1])
      interrupts = active
    end
    outcome = 'queued'
  end
end
local fields = cjson.decode(ARGV[7])
for k, v in pairs(fields) do redis.call('HSET', KEYS[4], k, v) end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'busy', 'updated_at', ARGV[4])
if outcome == 'dispatched' then
  redis.call('HSET', KEYS[1], 'active_run', ARGV[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
end
if ARGV[8] ~= '0' then redis.call('SET', KEYS[5], ARGV[1], 'EX', tonumber(ARGV[8])) end
return {outcome, ARGV[1], interrupts}
"""

# The terminal event and the final status land together (whoever sees one sees the other), and
# the thread passes to its next pending run.
# KEYS: 1 thread, 2 pending, 3 run, 4 event log, 5 thread runs
# ARGV: 1 run_id, 2 status, 3 now_iso, 4 thread status when nothing follows, 5 run ttl, 6 error,
#       7 terminal event name, 8 terminal event data, 9 event log ttl, 10 '1' if the run has a
#       thread to hand on, 11 run-key prefix, 12 thread ttl once idle (0: none), 13 the thread's
#       state size now ('' = unknown)
# Returns {'next', run_id, trace} when a run follows (the caller queues it), else {what}.
FINISH_RUN = """
redis.call('XADD', KEYS[4], '*', 'e', ARGV[7], 'd', ARGV[8])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[9]))
redis.call('HSET', KEYS[3], 'status', ARGV[2], 'updated_at', ARGV[3], 'error', ARGV[6])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
if ARGV[10] ~= '1' then return {'no_thread'} end
if redis.call('HGET', KEYS[1], 'active_run') ~= ARGV[1] then return {'not_active'} end
if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'state_bytes', ARGV[13]) end
while true do
  local nxt = redis.call('LPOP', KEYS[2])
  if not nxt then break end
  local nxt_key = ARGV[11] .. nxt
  if redis.call('HGET', nxt_key, 'status') == 'pending' then
    redis.call('HSET', KEYS[1], 'active_run', nxt, 'status', 'busy', 'updated_at', ARGV[3])
    return {'next', nxt, redis.call('HGET', nxt_key, 'trace') or '{}'}
  end
end
redis.call('HSET', KEYS[1], 'active_run', '', 'status', ARGV[4], 'updated_at', ARGV[3])
if ARGV[12] ~= '0' then
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[12]))
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[12]))
  redis.call('EXPIRE', KEYS[5], tonumber(ARGV[12]))
end
return {'idle'}
"""

# A run still parked behind its thread's active run is cancelled in place.
# KEYS: 1 pending, 2 run; ARGV: 1 run_id, 2 now_iso, 3 run ttl
CANCEL_PARKED = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) > 0 then
  redis.call('HSET', KEYS[2], 'status', 'interrupted', 'updated_at', ARGV[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
  return 1
end
return 0
"""

# Fields of a thread that exists (never recreates a deleted or expired thread as a stub).
# KEYS: 1 thread; ARGV: field, value, ...
SET_THREAD_FIELDS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# The thread is marked as being deleted (no new run starts on it) and its parked runs dropped,
# atomically with reading its active run, which the caller then stops.
# KEYS: 1 thread, 2 pending. Returns the active run id ('' = none), or nil without a thread.
MARK_DELETING = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
redis.call('HSET', KEYS[1], 'deleting', '1')
redis.call('DEL', KEYS[2])
return redis.call('HGET', KEYS[1], 'active_run') or ''
"""

# KEYS: 1 lease; ARGV: 1 owner, 2 ttl ms
RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: 1 lease; ARGV: 1 owner
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# A batch of a run's events, written at most once however often it is sent: redis-py resends a
# pipeline whose reply was lost (a timeout, a dropped connection) and the first send may well have
# been applied. The batch's last entry carries the batch's marker (field `b`: the writer's id and
# the batch number); a batch whose marker is already the log's last entry is not written again.
# One writer has one batch in flight at a time, so its previous batch is the one to compare with.
# KEYS: 1 event log
# ARGV: 1 batch marker, 2 the log's safety ttl ('0': leave the expiry), 3.. event, data pairs
# Returns 1 when written, 0 when the batch was there already.
APPEND_EVENTS = """
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if top then
  local fields = top[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'b' and fields[i + 1] == ARGV[1] then return 0 end
  end
end
local last = #ARGV - 1
for i = 3, last - 2, 2 do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i], 'd', ARGV[i + 1])
end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[last], 'd', ARGV[last + 1], 'b', ARGV[1])
if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""
