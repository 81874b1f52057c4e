-- The reaper's decision, on Redis's clock: the workers whose last heartbeat landed more than
-- `ttl_ms` ago - judged only when the reaping worker's own heartbeats have gone through
-- steadily (heartbeat.lua) for `steady_ms` and its last one is not late: after a frozen or
-- unreachable Redis every heartbeat is old, its own too, and a reaper judging then would
-- take the runs of live workers. One reaper at a time (`lock`, `lock_ms`). Each worker named
-- is recovered by recover.lua, which judges it again as it gives its runs back (`stale_ms`).
-- Its contract: common/scripts/contracts.py REAP. Returns the names of the lost workers.
local now = redis_now_ms()
local mine = tonumber(redis.call('ZSCORE', K.workers, A.worker))
local since = tonumber(redis.call('GET', K.steady))
if not mine or not since or now - mine > A.late_ms or now - since < A.steady_ms then
  return {}
end
if not redis.call('SET', K.lock, A.worker, 'NX', 'PX', A.lock_ms) then return {} end
local out = {}
for _, name in ipairs(redis.call('ZRANGEBYSCORE', K.workers, '-inf', now - A.ttl_ms)) do
  if name ~= A.worker then out[#out + 1] = name end
end
return out
