-- The per-run step of a worker, one round trip: finish the run it just ran (if any) and start
-- the next one it holds (if any). KEYS: [1] events channel (all), [2] the worker's runs list,
-- [3] RQ's worker hash, [4..10] status index sets, [11] run counters; then a finish run block (11 keys) when
-- ARGV[5] is set, then a start run block when ARGV[10] is set.
-- ARGV: now_ms, now_iso, cap, worker, fin_id, fin_sid, outcome, payload, duration_ms,
--       start_id, start_sid
load_globals(4, 1)
local runs, rqworker = KEYS[2], KEYS[3]
local fin_id, start_id = ARGV[5], ARGV[10]
local off = 12
local reply = {'', 0, '', false, false, false, 0}

if fin_id ~= '' then
  local B = run_block(off, ARGV[6])
  off = off + 11
  local outcome, payload = ARGV[7], ARGV[8]
  local j = redis.call('HMGET', B.job, 'state', 'worker_name', 'retries_left', 'attempts')
  redis.call('LREM', runs, 1, fin_id)
  redis.call('HDEL', rqworker, 'current_job')
  if j[1] ~= 'started' or j[2] ~= G.worker then
    reply[1] = 'stale'  -- recovered, canceled or destroyed while it ran: not ours to record
  else
    local attempts = num(j[4])
    redis.call('ZREM', B.wip, fin_id .. ':' .. attempts)
    redis.call('SREM', B.running, fin_id)
    local status = redis.call('HGET', B.session, 'status')
    if outcome == 'succeeded' then
      redis.call('HSET', B.job, 'state', 'succeeded', 'status', 'finished', 'ended_at',
        G.now_iso, 'result', payload)
      redis.call('ZADD', B.finished, '+inf', fin_id)
      move(B, 'started', 'succeeded')
      emit(B, 'task.succeeded', fin_id, map({'duration_ms', P(tonumber(ARGV[9]))}))
      redis.call('HINCRBY', rqworker, 'successful_job_count', 1)
      reply[1] = 'succeeded'
    elseif outcome == 'requeue' then
      -- stopped by a worker shutdown: back to the front, and the attempt is not charged
      redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'attempts', attempts - 1)
      redis.call('LPUSH', B.queue, fin_id)
      wake(B)
      move(B, 'started', 'queued')
      emit(B, 'task.queued', fin_id, map({'reason', payload}))
      reply[1] = 'requeued'
    elseif outcome == 'canceled' or status == 'Terminating' or status == 'Stopped' then
      redis.call('HSET', B.job, 'error', payload)
      cancel_run(B, fin_id, 'started', 'stopped while running')
      reply[1] = 'canceled'
    else
      reply[1] = fail_or_retry(B, fin_id, payload, attempts, num(j[3]), outcome == 'failed',
        rqworker)
    end
    if status == 'Terminating' then reply[2] = 1 else maybe_end(B) end
  end
end

if start_id ~= '' then
  local B = run_block(off, ARGV[11])
  local j = redis.call('HMGET', B.job, 'state', 'data', 'sq', 'timeout', 'attempts')
  if not j[1] then
    redis.call('LREM', runs, 1, start_id)
    reply[3] = 'gone'
  elseif j[1] ~= 'queued' then
    redis.call('LREM', runs, 1, start_id)
    reply[3] = 'skip'
    reply[4] = j[1]
  else
    local status = redis.call('HGET', B.session, 'status')
    if status == 'Paused' then
      -- parked in order with the session's held runs; play/step release them
      redis.call('LREM', runs, 1, start_id)
      redis.call('RPUSH', B.held, start_id)
      redis.call('HSET', B.job, 'state', 'held', 'status', 'deferred')
      move(B, 'queued', 'held')
      reply[3] = 'held'
    elseif status == 'Terminating' or status == 'Stopped' or not status then
      redis.call('LREM', runs, 1, start_id)
      cancel_run(B, start_id, 'queued', 'session ' .. (status or 'gone'))
      reply[3] = 'skip'
      reply[4] = 'canceled'
    else
      local attempts = num(j[5]) + 1
      redis.call('HSET', B.job, 'state', 'started', 'status', 'started', 'started_at', G.now_iso,
        'worker_name', G.worker, 'attempts', attempts)
      redis.call('ZADD', B.wip, '+inf', start_id .. ':' .. attempts)
      redis.call('SADD', B.running, start_id)
      redis.call('HSET', rqworker, 'current_job', start_id)
      move(B, 'queued', 'started')
      if status ~= 'Running' then
        set_status(B, 'Running')
        if redis.call('HSETNX', B.session, 'started_at', G.now_ms) == 0 then
          redis.call('HDEL', B.session, 'finished_at')
        end
        emit(B, 'session.started', nil, nil)
      end
      emit(B, 'task.started', start_id, map({'attempt', P(attempts)}))
      reply[3] = 'run'
      reply[4] = j[2]
      reply[5] = j[3] or false
      reply[6] = j[4] or false
      reply[7] = attempts
    end
  end
end
return reply
