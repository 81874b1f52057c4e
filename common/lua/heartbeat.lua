-- A worker's heartbeat, stamped with Redis's clock: a call that waited (a frozen Redis, a
-- blocked connection) counts when it lands, not when it was sent. Keeps the worker's
-- `steady` time: since when its heartbeats have landed at most `late_ms` apart - the reaper
-- judges others only once its own have been steady for a TTL (reap.lua). `vouch` (1: its
-- supervisor, for a live child whose own threads may not run): only a worker still
-- registered is kept, never brought back once it left or was recovered, and RQ's counters
-- stay the worker's own. Its contract: common/scripts/contracts.py HEARTBEAT.
-- Returns {now, steady since} (ms; {0, 0}: a vouch for a worker no longer registered).
local now = redis_now_ms()
local last = tonumber(redis.call('ZSCORE', K.workers, A.worker))
if A.vouch == 1 and not last then return {0, 0} end
local since = tonumber(redis.call('GET', K.steady))
if not last or not since or now - last > A.late_ms then since = now end
redis.call('SET', K.steady, since, 'PX', A.keep_ms)
redis.call('ZADD', K.workers, now, A.worker)
if A.vouch == 0 or redis.call('EXISTS', K.rq_worker) == 1 then
  redis.call('HSET', K.rq_worker, 'last_heartbeat', A.now_iso)
  redis.call('EXPIRE', K.rq_worker, A.expire_s)
end
for i = 1, A.ncounts do
  redis.call('HINCRBY', K.rq_worker, AB.count(i).name, AB.count(i).n)
end
return {now, since}
