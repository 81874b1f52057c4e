-- Give back the runs a worker held: claimed runs return to the front of their queue; a run it
-- had started used up an attempt (SPEC §4) and is retried or failed with the reason. Used for
-- a lost worker (by the reaper or its supervisor) and by a worker leaving cleanly.
-- KEYS: [1] events channel (all), [2] live workers zset, [3] RQ's workers set, [4..10] status
-- indexes, [11] run counters, [12] the worker's runs list, [13] its RQ worker hash, [14] its
-- inbox, [15] the idle workers set, [16] the run last handed to it; then a run block per run.
-- ARGV: now_ms, now_iso, cap, worker (the lost one), reason (msgpack string), unregister
-- ('1'/'0'), then run id and session id pairs. Returns the ids of sessions being destroyed
-- whose last running run this canceled.
load_globals(4, 1)
local reason, unregister = ARGV[5], ARGV[6] == '1'
local n = (#ARGV - 6) / 2
local out = {}
redis.call('SREM', KEYS[15], G.worker)  -- no more runs are handed to it
-- The worker ran its runs in list order: the first started one is the one it was running
-- (it used up an attempt); started ones behind it never began and go back uncharged, as do
-- one handed to it while it waited that it did not say it took (still in its inbox, or
-- taken by the BLPOP of a frozen process).
local unbegun = {}
local handed = redis.call('GET', KEYS[16])
if handed then unbegun[handed] = true end
for _, entry in ipairs(redis.call('LRANGE', KEYS[14], 0, -1)) do
  local ok, e = pcall(cmsgpack.unpack, entry)
  if ok and type(e) == 'table' and e[1] then unbegun[e[1]] = true end
end
local blocks, charged = {}, nil
for r = 1, n do
  local id, sid = ARGV[6 + 2 * r - 1], ARGV[6 + 2 * r]
  blocks[r] = run_block(17 + (r - 1) * 11, sid)
  if not charged and not unbegun[id] then
    local j = redis.call('HMGET', blocks[r].job, 'state', 'worker_name')
    if j[1] == 'started' and j[2] == G.worker then charged = id end
  end
end
for r = n, 1, -1 do
  local id, sid = ARGV[6 + 2 * r - 1], ARGV[6 + 2 * r]
  local B = blocks[r]
  if redis.call('LREM', KEYS[12], 1, id) > 0 then
    local j = redis.call('HMGET', B.job, 'state', 'worker_name', 'retries_left', 'attempts')
    local ours = j[1] == 'started' and j[2] == G.worker
    if ours then
      local attempts = num(j[4])
      redis.call('ZREM', B.wip, id .. ':' .. attempts)
      redis.call('SREM', B.running, id)
      local status = redis.call('HGET', B.session, 'status')
      if status == 'Terminating' or status == 'Stopped' then
        cancel_run(B, id, 'started', 'worker lost while stopping')
        if status == 'Terminating' then out[#out + 1] = sid end
      elseif id == charged then
        fail_or_retry(B, id, reason, attempts, num(j[3]), true)
        maybe_end(B)
      else
        redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'attempts', attempts - 1)
        redis.call('LPUSH', B.queue, id)
        wake(B)
        move(B, 'started', 'queued')
        emit(B, 'task.queued', id, map({'reason', P('given back unrun by a lost worker')}))
      end
    elseif j[1] == 'queued' then
      redis.call('LPUSH', B.queue, id)
      wake(B)
    end
  end
end
flush()
if redis.call('LLEN', KEYS[12]) == 0 then
  redis.call('DEL', KEYS[14], KEYS[16])  -- of runs given back above
end
if unregister and redis.call('LLEN', KEYS[12]) == 0 then
  redis.call('ZREM', KEYS[2], G.worker)
  redis.call('SREM', KEYS[3], KEYS[13])
  redis.call('DEL', KEYS[13])
end
return out
