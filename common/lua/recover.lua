-- Give back the runs a worker held: claimed runs return to the front of their queue; a run it
-- had started used up an attempt (SPEC §4) and is retried or failed with the reason. Used for
-- a lost worker (by the reaper or its supervisor) and by a worker leaving cleanly.
-- Its contract (common/scripts/recover.py RECOVER): the live workers zset, RQ's workers set,
-- the worker's runs list, RQ worker hash, inbox and handed run, the idle workers set; a `run`
-- key block and a `run` argument block (id, sid) per run; `worker` is the lost one, `reason`
-- (msgpack string), `unregister` (1: leave the registries too), `stale_ms` (> 0: the reaper's
-- call - only if the worker's last heartbeat landed that long ago by Redis's clock: it may
-- have beaten since the reaper judged it), `charged` (started runs of this worker already
-- charged by the calls before this one: a namespace of several partitions is recovered one
-- partition at a time), `seen` (1: its supervisor saw it run `current`, '' for none: see
-- below). Returns {recovered (0: it is alive, nothing done), the ids of
-- sessions being destroyed whose last running run this canceled, the runs this call charged}.
if A.stale_ms > 0 then
  local beat = tonumber(redis.call('ZSCORE', K.workers, A.worker))
  if beat and beat > redis_now_ms() - A.stale_ms then return {0, {}, 0} end
end
load_globals()
local reason, unregister = A.reason, A.unregister == 1
local n = A.nruns
local out = {}
redis.call('SREM', K.idle_workers, G.worker)  -- no more runs are handed to it
-- The worker ran its runs in list order: the first started one is the one it was running
-- (it used up an attempt; see below for a worker with more in flight, or one that holds
-- finishes back); started ones behind it never began and go back uncharged, as do one
-- handed to it while it waited that it did not say it took (still in its inbox, or taken by
-- the BLPOP of a frozen process).
local unbegun = {}
local handed = redis.call('GET', K.handed)
if handed then unbegun[handed] = true end
for _, entry in ipairs(redis.call('LRANGE', K.inbox, 0, -1)) do
  local ok, e = pcall(cmsgpack.unpack, entry)
  if ok and type(e) == 'table' and e[1] then unbegun[e[1]] = true end
end
-- A worker with N runs in flight (`--max-jobs N`, its RQ worker hash says) began them in list
-- order too: its first N started runs are charged, less those charged before (`charged`).
-- A worker of one run at a time says which run it goes on to with each step (RQ's
-- `current_job`, run.lua): that one is charged. One that holds back the finishes of very short
-- runs (worker.loop FINISHES_HELD_MAX) goes on past it without a word (`holds`): its
-- supervisor, which shares the run it runs, says which one it was (`seen`: `current`, '' for
-- none); where nobody can (the reaper's call), none is charged - nor where its RQ worker hash
-- expired. The started runs before the
-- one it was running ended, their finishes not sent yet - they did not fail (a failure is sent
-- at once), so they go back uncharged, to run again, saying so.
local blocks, charged = {}, {}
local w = redis.call('HMGET', K.rq_worker, 'max_jobs', 'current_job', 'holds')
local inflight = (tonumber(w[1]) or 1) - A.charged
-- (every step writes `holds`: without it, the hash expired - a worker lost for longer than
-- its TTL - and nothing tells which run it was running either)
local known = w[3] or redis.call('EXISTS', K.rq_worker) == 1
local current, guess = w[2], true
if w[1] then
  current = nil
elseif A.seen == 1 then
  current, guess = A.current, false
elseif w[3] == '1' or not known then
  current, guess = nil, false
end
local through, ended_unsent = 0, {}
if current and A.charged == 0 then
  for r = 1, n do
    if AB.run(r).id == current then through = r end
  end
  for r = 1, through - 1 do ended_unsent[AB.run(r).id] = true end
end
local unsure = through == 0 and not guess  -- each may have ended, or never begun
local ncharged = 0
for r = 1, n do
  local id, sid = AB.run(r).id, AB.run(r).sid
  blocks[r] = run_block(KB.run(r), sid)
  if (through > 0 and r == through or through == 0 and guess and inflight > 0)
    and not unbegun[id] then
    local j = redis.call('HMGET', blocks[r].job, 'state', 'worker_name')
    if j[1] == 'started' and j[2] == G.worker then
      charged[id] = true
      inflight = inflight - 1
      ncharged = ncharged + 1
    end
  end
end
for r = n, 1, -1 do
  local id, sid = AB.run(r).id, AB.run(r).sid
  local B = blocks[r]
  if redis.call('LREM', K.runs, 1, id) > 0 then
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
      elseif charged[id] then
        fail_or_retry(B, id, reason, attempts, num(j[3]), true, K.schedule)
        maybe_end(B)
      else
        redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'attempts', attempts - 1)
        push_run(B, id, true)
        move(B, 'started', 'queued')
        local why = ended_unsent[id] and 'given back by a lost worker: it ended, its end unsent'
          or unsure and not unbegun[id]
          and 'given back by a lost worker: unrun, or it ended, its end unsent'
          or 'given back unrun by a lost worker'
        emit(B, 'task.queued', id, map({'reason', P(why)}))
      end
      unthrottle(B)  -- a slot of its session is free
    elseif j[1] == 'queued' then
      push_run(B, id, true)
    end
  end
end
flush()
if redis.call('LLEN', K.runs) == 0 then
  redis.call('DEL', K.inbox, K.handed)  -- of runs given back above
end
if unregister and redis.call('LLEN', K.runs) == 0 then
  redis.call('ZREM', K.workers, G.worker)
  redis.call('SREM', K.rq_workers, K.rq_worker)
  redis.call('DEL', K.rq_worker)
end
return {1, out, ncharged}
