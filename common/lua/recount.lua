-- The global run counters (keys.run_counts) set to the sum of every session's: the scripts
-- keep them by increments, and anything that changed a session behind them (RQ's own tools,
-- a session deleted by hand) would leave them wrong for good. Run now and then by the
-- scheduler's sweep (worker/schedule.py), under its lock; O(sessions).
-- Its contract (common/scripts/contracts.py RECOUNT): the counters hash and the session index.
-- Returns the counters it changed, state then the correction, flat.
local STATES = {'queued', 'deferred', 'held', 'started', 'succeeded', 'failed', 'canceled'}
local sum = {}
for _, st in ipairs(STATES) do sum[st] = 0 end
for _, sid in ipairs(redis.call('HKEYS', K.sessions)) do
  local v = redis.call('HMGET', key_session(sid), unpack(STATES))
  for i, st in ipairs(STATES) do sum[st] = sum[st] + num(v[i]) end
end
local out = {}
local have = redis.call('HMGET', K.counters, unpack(STATES))
for i, st in ipairs(STATES) do
  local delta = sum[st] - num(have[i])
  if delta ~= 0 then
    redis.call('HINCRBY', K.counters, st, delta)
    out[#out + 1] = st
    out[#out + 1] = delta
  end
end
return out
