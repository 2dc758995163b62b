"""The run engine's Lua scripts. Each touches the keys of one thread only (one cluster slot).

Every key comes in KEYS, built by `keys.py`; a run the script finds by id (the thread's active or
next run) is reached through the thread's run-key prefix passed in ARGV. The queue is never
touched here: appending a dispatched run to it is the caller's second, idempotent step.
"""

# The run is recorded and the thread's multitask strategy decided, atomically, with the checks a
# thread makes of a new run (its pinned assistant, its state limit).
# KEYS: 1 thread, 2 pending, 3 thread runs, 4 run, 5 idempotency key
# ARGV: 1 run_id, 2 tenant, 3 strategy, 4 now_iso, 5 score, 6 'create' a missing thread or not,
#       7 idempotency ttl (0: no key), 8 run-key prefix, 9 thread_id, 10 '1' if the run is
#       stateless (the thread it creates is temporary), 11 the run's assistant id, 12 the bytes the
#       run's input adds to the thread's state, 13 the state limit in bytes (0: none),
#       14.. the run record's fields (name, value, ...)
# Returns {outcome, value, run asked to stop, runs in the thread's index}; outcome: existing |
# no_thread (none, or being deleted) | temporary (a stateless run's thread) | pinned (value: the
# thread's assistant, as JSON) | too_large (value: the thread's state bytes) | conflict |
# dispatched (the thread's active run now) | queued (waits behind the active run).
# A thread with an active run never expires: its keys lose their TTL here and get it back when
# the thread goes idle (FINISH_RUN).
CREATE_RUN = """
if ARGV[7] ~= '0' then
  local existing = redis.call('GET', KEYS[5])
  if existing then return {'existing', existing, '', 0} end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {'existing', ARGV[1], '', 0} end
local thread = redis.call('HMGET', KEYS[1], 'tenant', 'deleting', 'temporary', 'metadata',
  'state_bytes', 'active_run')
local owner = thread[1]
if not owner then
  if ARGV[6] ~= 'create' then return {'no_thread', '', '', 0} end
  redis.call('HSET', KEYS[1], 'thread_id', ARGV[9], 'tenant', ARGV[2],
    'created_at', ARGV[4], 'updated_at', ARGV[4], 'metadata', '{}', 'status', 'idle',
    'active_run', '', 'temporary', ARGV[10])
elseif owner ~= ARGV[2] or thread[2] == '1' then
  return {'no_thread', '', '', 0}
elseif thread[3] == '1' then
  return {'temporary', '', '', 0}
elseif thread[4] and string.find(thread[4], '"assistant_id"', 1, true) then
  local ok, metadata = pcall(cjson.decode, thread[4])
  local pinned = ok and type(metadata) == 'table' and metadata['assistant_id']
  if pinned and pinned ~= cjson.null and pinned ~= '' and pinned ~= 0
      and pinned ~= ARGV[11] then
    return {'pinned', cjson.encode(pinned), '', 0}
  end
end
local limit = tonumber(ARGV[13])
if limit > 0 then
  local current = tonumber(thread[5] or '0') or 0
  if current + tonumber(ARGV[12]) > limit then return {'too_large', tostring(current), '', 0} end
end
local active = thread[6]
local outcome = 'dispatched'
local interrupts = ''
if active and active ~= '' then
  local active_status = redis.call('HGET', ARGV[8] .. active, 'status')
  if active_status == 'pending' or active_status == 'running' then
    if ARGV[3] == 'reject' then return {'conflict', active, '', 0} end
    if ARGV[3] == 'enqueue' then
      redis.call('RPUSH', KEYS[2], ARGV[1])
    else
      redis.call('LPUSH', KEYS[2], ARGV[1])
      interrupts = active
    end
    outcome = 'queued'
  end
end
redis.call('HSET', KEYS[4], unpack(ARGV, 14))
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
if outcome == 'dispatched' then
  redis.call('HSET', KEYS[1], 'status', 'busy', 'updated_at', ARGV[4], 'active_run', ARGV[1])
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
else
  redis.call('HSET', KEYS[1], 'status', 'busy', 'updated_at', ARGV[4])
end
if ARGV[7] ~= '0' then redis.call('SET', KEYS[5], ARGV[1], 'EX', tonumber(ARGV[7])) end
return {outcome, ARGV[1], interrupts, redis.call('ZCARD', KEYS[3])}
"""

# An attempt of a run starts: the lease is taken, the run is marked running, and what decides
# how the attempt goes is read, all at once, so a worker starts a run in one round trip.
# KEYS: 1 run, 2 lease, 3 cancel flag, 4 thread, 5 event log
# ARGV: 1 lease owner (the replica), 2 lease ttl ms, 3 now_iso, 4 '1' to record ARGV[5] as the
#       run's base checkpoint (kept if one is recorded already), 5 base checkpoint id,
#       6 max attempts, 7 state limit in bytes (0: none), 8 the event log's safety ttl
# Returns {'missing'} (no such run), {'finished'} (it has ended), {'parked'} (it waits behind its
# thread's active run), {'leased'} (another replica holds it), or {decision, detail, the run's
# fields before this attempt, the thread's metadata}; decision: exhausted (past the attempt
# limit) | cancel (detail: the action asked) | too_large (detail: the thread's state bytes) |
# run. Every attempt after the first writes `retry` first; a run that executes gets `metadata`.
CLAIM_RUN = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {'missing'} end
local run = {}
for i = 1, #fields, 2 do run[fields[i]] = fields[i + 1] end
local status = run['status']
if status ~= 'pending' and status ~= 'running' then return {'finished'} end
local thread = redis.call('HMGET', KEYS[4], 'active_run', 'temporary', 'state_bytes', 'metadata')
if status == 'pending' and thread[1] and thread[1] ~= run['run_id'] then return {'parked'} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'leased'} end
local attempt = (tonumber(run['attempt'] or '0') or 0) + 1
redis.call('HSET', KEYS[1], 'status', 'running', 'replica', ARGV[1], 'attempt', attempt,
  'updated_at', ARGV[3])
if ARGV[4] == '1' and not run['base_checkpoint'] then
  redis.call('HSET', KEYS[1], 'base_checkpoint', ARGV[5])
end
local metadata = thread[4] or '{}'
local logged = false
if attempt > 1 then
  redis.call('XADD', KEYS[5], '*', 'e', 'retry',
    'd', '{"attempt":' .. attempt .. ',"run_id":"' .. run['run_id'] .. '"}')
  logged = true
end
local decision, detail = 'run', ''
local cancel = redis.call('GET', KEYS[3])
local limit = tonumber(ARGV[7])
if attempt > tonumber(ARGV[6]) then
  decision = 'exhausted'
elseif cancel then
  decision, detail = 'cancel', cancel
elseif attempt == 1 and limit > 0 and thread[2] ~= '1' and run['write_bytes']
    and (tonumber(thread[3] or '0') or 0) + tonumber(run['write_bytes']) > limit then
  decision, detail = 'too_large', thread[3] or '0'
else
  redis.call('XADD', KEYS[5], '*', 'e', 'metadata',
    'd', '{"run_id":"' .. run['run_id'] .. '","attempt":' .. attempt .. '}')
  logged = true
end
if logged then redis.call('EXPIRE', KEYS[5], tonumber(ARGV[8])) end
return {decision, detail, fields, metadata}
"""

# The terminal event and the final status land together (whoever sees one sees the other), and
# the thread passes to its next pending run.
# The lease of the worker that finishes it goes with it.
# KEYS: 1 thread, 2 pending, 3 run, 4 event log, 5 thread runs, 6 lease
# ARGV: 1 run_id, 2 status, 3 now_iso, 4 thread status when nothing follows, 5 run ttl, 6 error,
#       7 terminal event name, 8 terminal event data, 9 event log ttl, 10 '1' if the run has a
#       thread to hand on, 11 run-key prefix, 12 thread ttl once idle (0: none), 13 the thread's
#       state size now ('' = unknown), 14 the lease owner to release it for ('' = none)
# Returns {'next', run_id, trace} when a run follows (the caller queues it), else {what}.
FINISH_RUN = """
if ARGV[14] ~= '' and redis.call('GET', KEYS[6]) == ARGV[14] then redis.call('DEL', KEYS[6]) end
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

# Fields of a thread or a run that exists (never recreates a deleted or expired one as a stub).
# KEYS: 1 thread or run record; ARGV: field, value, ...
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

# A heartbeat: the lease is extended if it is still ours, and the run's cancel flag read with it
# (a cancel published while the listener was reconnecting is not lost).
# KEYS: 1 lease, 2 cancel flag; ARGV: 1 owner, 2 ttl ms
# Returns {1 if renewed else 0, the cancel action or false}.
RENEW_LEASE = """
local renewed = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then renewed = redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return {renewed, redis.call('GET', KEYS[2])}
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

# A job is done: acknowledged and deleted from the queue in one call. Queue keys only.
# KEYS: 1 queue; ARGV: 1 group, 2 entry id
ACK_JOB = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
"""

# Admit a run under its tenant's quota (scheduler.py). KEYS: the tenant's admitted runs (sorted
# set). ARGV: member (thread \n run), now, limit. Returns {admitted 0|1, runs counted}.
# Admitting a member twice (a retried create) counts it once.
ADMIT_RUN = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {1, redis.call('ZCARD', KEYS[1])}
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  return {0, n}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return {1, n + 1}
"""

# Fair dispatch (scheduler.FairQueue): start-time fair queueing over tenants. Every key is under
# the `{sched}` hash tag (one cluster slot); a tenant's waiting list is ARGV's prefix + tenant.
# KEYS: tenants (sorted set: tenant -> start tag of its first waiting job), vtime (string: the
# start tag of the job dispatched last), finish (hash: tenant -> finish tag of its last job when
# its list ran empty), weight (hash: tenant -> weight), waiting (string: jobs waiting), the
# tenant's list.
# ARGV: tenant, job, weight ("" = the tenant's last, else the default), default weight.
# Returns how many of the tenant's jobs wait now.
FAIR_ENQUEUE = """
local w = tonumber(ARGV[3])
if w then
  redis.call('HSET', KEYS[4], ARGV[1], w)
end
local n = redis.call('RPUSH', KEYS[6], ARGV[2])
redis.call('INCR', KEYS[5])
if n == 1 then
  local v = tonumber(redis.call('GET', KEYS[2]) or '0')
  local f = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  redis.call('ZADD', KEYS[1], math.max(v, f), ARGV[1])
end
return n
"""

# Take up to ARGV[1] jobs in fair order into the feeding set (score ARGV[2], now), from where
# the caller appends them to the run queue. KEYS: tenants, vtime, finish, weight, waiting,
# feeding. ARGV: count, now, list prefix, default weight. Returns the jobs.
FAIR_TAKE = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #head == 0 then break end
  local tenant, s = head[1], tonumber(head[2])
  local list = ARGV[3] .. tenant
  local job = redis.call('LPOP', list)
  local w = tonumber(redis.call('HGET', KEYS[4], tenant) or ARGV[4])
  local f = s + 1 / w
  if redis.call('LLEN', list) > 0 then
    redis.call('ZADD', KEYS[1], f, tenant)
  else
    redis.call('ZREM', KEYS[1], tenant)
    redis.call('HSET', KEYS[3], tenant, f)
  end
  if s > tonumber(redis.call('GET', KEYS[2]) or '0') then
    redis.call('SET', KEYS[2], s)
  end
  if job then
    redis.call('DECR', KEYS[5])
    redis.call('ZADD', KEYS[6], ARGV[2], job)
    out[#out + 1] = job
  end
end
return out
"""
