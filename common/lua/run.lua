-- A worker's step, one round trip: finish the runs it ran, then start the runs it holds.
-- KEYS: [1] events channel (all), [2] the worker's runs list, [3] RQ's worker hash, [4..10]
-- status index sets, [11] run counters; then a run block (11 keys) per finish, then one per
-- start. ARGV: now_ms, now_iso, cap, worker, nfinish, nstart, then per finish: run id,
-- session id, outcome, payload, duration ms; then per start: run id, session id; then the
-- run the worker goes on to ('' for none).
-- Returns, per finish: result, flags (1: its session is being destroyed, 2: it ended and runs
-- wait on it - see control.lua resolve); then per start:
-- result, data, sq, timeout, attempt.
-- A run the worker holds stays on its runs list until it is finished: the list, in the order
-- the worker runs them, is what recovery gives back if the worker is lost (recover.lua).
load_globals(4, 1)
local runs, rqworker = KEYS[2], KEYS[3]
local nfin, nstart = tonumber(ARGV[5]), tonumber(ARGV[6])
local reply = {}

local function finish(B, id, outcome, payload, duration_ms)
  local j = redis.call('HMGET', B.job, 'state', 'worker_name', 'retries_left', 'attempts',
    'children')
  redis.call('LREM', runs, 1, id)
  if j[1] ~= 'started' or j[2] ~= G.worker then
    return 'stale', 0  -- recovered, canceled or destroyed while it ran: not ours to record
  end
  local attempts = num(j[4])
  redis.call('ZREM', B.wip, id .. ':' .. attempts)
  redis.call('SREM', B.running, id)
  local status = sess(B).status or redis.call('HGET', B.session, 'status')
  sess(B).status = status
  local result
  if outcome == 'succeeded' then
    redis.call('HSET', B.job, 'state', 'succeeded', 'status', 'finished', 'ended_at',
      G.now_iso, 'result', payload)
    redis.call('ZADD', B.finished, '+inf', id)
    move(B, 'started', 'succeeded')
    emit(B, 'task.succeeded', id, '\129\171duration_ms' .. P(tonumber(duration_ms)))
    result = 'succeeded'
  elseif outcome == 'requeue' then
    -- given back unrun, or stopped by a worker shutdown: the attempt is not charged
    redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'attempts', attempts - 1)
    redis.call('LPUSH', B.queue, id)
    wake(B)
    move(B, 'started', 'queued')
    emit(B, 'task.queued', id, map({'reason', payload}))
    result = 'requeued'
  elseif outcome == 'canceled' or status == 'Terminating' or status == 'Stopped' then
    redis.call('HSET', B.job, 'error', payload)
    cancel_run(B, id, 'started', 'stopped while running')
    result = 'canceled'
  else
    result = fail_or_retry(B, id, payload, attempts, num(j[3]), outcome == 'failed')
  end
  local flags = 0
  if j[5] and result ~= 'requeued' and result ~= 'retrying' then flags = 2 end
  if status == 'Terminating' then return result, flags + 1 end
  maybe_end(B)
  return result, flags
end

local function start(B, id)
  local j = redis.call('HMGET', B.job, 'state', 'data', 'sq', 'timeout', 'attempts',
    'worker_name', 'pass')
  if j[1] == 'started' and j[6] == G.worker then
    -- started by us already: the reply to an earlier try of this call was lost
    return {'run', j[2], j[3] or false, j[4] or false, num(j[5])}
  elseif not j[1] then
    redis.call('LREM', runs, 1, id)
    return {'gone', false, false, false, 0}
  elseif j[1] ~= 'queued' then
    redis.call('LREM', runs, 1, id)
    return {'skip', j[1], false, false, 0}
  end
  local S = sess(B)
  local status = S.status or redis.call('HGET', B.session, 'status')
  S.status = status
  local passes = false
  if status == 'Paused' then
    -- a run step() released passes; so does one run per step() taken while none was held
    if j[7] then
      redis.call('HDEL', B.job, 'pass')
      passes = true
    elseif num(redis.call('HGET', B.session, 'step')) > 0 then
      redis.call('HINCRBY', B.session, 'step', -1)
      passes = true
    end
  end
  if status == 'Paused' and not passes then
    -- parked in order with the session's held runs; play/step release them
    redis.call('LREM', runs, 1, id)
    hold(B, id)
    redis.call('HSET', B.job, 'state', 'held', 'status', 'deferred')
    move(B, 'queued', 'held')
    return {'held', false, false, false, 0}
  elseif status ~= 'Running' and status ~= 'Pending' and status ~= 'Paused' then
    -- destroyed, stopped, or ended by a stop (a queued run left behind is not run)
    redis.call('LREM', runs, 1, id)
    if status then cancel_run(B, id, 'queued', 'session ' .. status) end
    return {'skip', 'canceled', false, false, 0}
  end
  local attempts = num(j[5]) + 1
  redis.call('HSET', B.job, 'state', 'started', 'status', 'started', 'started_at', G.now_iso,
    'worker_name', G.worker, 'attempts', attempts)
  redis.call('ZADD', B.wip, '+inf', id .. ':' .. attempts)
  redis.call('SADD', B.running, id)
  move(B, 'queued', 'started')
  if status == 'Pending' then
    set_status(B, 'Running')
    if redis.call('HSETNX', B.session, 'started_at', G.now_ms) == 0 then
      redis.call('HDEL', B.session, 'finished_at')
    end
    emit(B, 'session.started', nil, nil)
  end
  emit(B, 'task.started', id, '\129\167attempt' .. P(attempts))
  return {'run', j[2], j[3] or false, j[4] or false, attempts}
end

local off = 12
local a = 7
for _ = 1, nfin do
  local result, terminating = finish(run_block(off, ARGV[a + 1]), ARGV[a], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4])
  reply[#reply + 1] = result
  reply[#reply + 1] = terminating
  off = off + 11
  a = a + 5
end
for _ = 1, nstart do
  local r = start(run_block(off, ARGV[a + 1]), ARGV[a])
  for _, v in ipairs(r) do reply[#reply + 1] = v end
  off = off + 11
  a = a + 2
end
-- what the worker goes on to run (for RQ's view of it), or nothing
if ARGV[a] ~= '' then
  redis.call('HSET', rqworker, 'current_job', ARGV[a])
else
  redis.call('HDEL', rqworker, 'current_job')
end
flush()
return reply
