-- Carry out a destroy (SPEC §2): cancel the session's waiting runs; if none is running, delete
-- the session and everything it owns and emit session.destroyed; else report the running ones
-- (the caller stops them, and calls this again when they have ended).
-- KEYS: [1] events channel (all), [2] session index, [3] persistent names, [4..10] status
-- indexes, [11] run counters, [12] session, [13] history, [14] channel, [15] tasks, [16] task
-- names, [17] task keys, [18] held, [19] running, [20] objects, [21] state, [22] logs,
-- [23] kind index, [24] owner index, [25] the schedule zset, [26] the set of runs waiting on
-- dependencies; then 4 per run: job, started, finished and failed registries.
-- ARGV: now_ms, now_iso, cap, worker, sid, names field ('' if none), history ttl, run ids...
load_globals(4, 1)
local S = {sid = ARGV[5], session = KEYS[12], history = KEYS[13], chan = KEYS[14]}
local status = redis.call('HGET', S.session, 'status')
if not status then return {'gone'} end
set_status(S, 'Terminating')
local nruns = #ARGV - 7
local waiting = {'waiting'}
for r = 1, nruns do
  local id, job = ARGV[7 + r], KEYS[26 + (r - 1) * 4 + 1]
  local j = redis.call('HMGET', job, 'state', 'worker_name')
  if j[1] == 'queued' or j[1] == 'deferred' or j[1] == 'held' then
    S.job = job
    cancel_run(S, id, j[1], 'session destroyed')
    if j[1] == 'deferred' then
      -- nothing of it is left for the scheduler (a schedule may be months away)
      redis.call('ZREM', KEYS[25], id)
      redis.call('SREM', KEYS[26], id)
    end
  elseif j[1] == 'started' then
    waiting[#waiting + 1] = id
    waiting[#waiting + 1] = j[2] or ''
  end
end
if #waiting > 1 then
  flush()
  return waiting
end
emit(S, 'session.destroyed', nil, nil)
flush()
for r = 1, nruns do
  local base = 26 + (r - 1) * 4
  local id = ARGV[7 + r]
  redis.call('DEL', KEYS[base + 1])
  redis.call('ZREM', KEYS[base + 3], id)
  redis.call('ZREM', KEYS[base + 4], id)
end
-- the ended runs leave the global counters with the session
for _, state in ipairs({'succeeded', 'failed', 'canceled'}) do
  local n = num(redis.call('HGET', S.session, state))
  if n > 0 then redis.call('HINCRBY', G.stats_key, state, -n) end
end
redis.call('DEL', KEYS[15], KEYS[16], KEYS[17], KEYS[18], KEYS[19], KEYS[20], KEYS[21], KEYS[22],
  KEYS[12])
redis.call('HDEL', KEYS[2], S.sid)
if ARGV[6] ~= '' then redis.call('HDEL', KEYS[3], ARGV[6]) end
redis.call('SREM', G.idx['Terminating'], S.sid)
redis.call('SREM', KEYS[23], S.sid)
redis.call('SREM', KEYS[24], S.sid)
redis.call('EXPIRE', S.history, tonumber(ARGV[7]))
return {'destroyed'}
