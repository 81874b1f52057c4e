-- A worker's step, one round trip: finish the runs it ran, start runs it holds, then claim
-- and start more from its queues - so that an idle worker's wake is followed by one call,
-- and a busy one finishes its last run and takes the next batch in the same call.
-- KEYS: [1] events channel (all), [2] the worker's runs list, [3] RQ's worker hash, [4..10]
-- status index sets, [11] run counters, [12] the worker's inbox, [13] the idle workers set,
-- [14] the run last handed to it (see enqueue.lua `hand`);
-- then 6 keys per queue the worker serves, in priority order (list, wake, started, finished
-- and failed registries, idle workers list); then a run block (11 keys) per finish, then one
-- per start.
-- ARGV: now_ms, now_iso, cap, worker, nqueues, the control queue's index (0: none), the 12
-- key templates of a claimed run (the text before and after its id in its job key, then
-- before and after its session id in its session, history, channel, running and held keys:
-- keys.py's names, cut where the id goes), then nfinish, nstart, nclaim, wait (1: a claim
-- that finds nothing lists the worker as waiting idle, for enqueues to hand it a run); per
-- finish: run id, session id, outcome, payload, duration ms; per start: run id, session id;
-- then the run the worker goes on to ('' for none: the first run this call starts, if any).
-- Returns, per finish: result, flags (1: its session is being destroyed, 2: it ended and runs
-- wait on it - see control.lua resolve); per start: result, data, sq, timeout, attempt; per
-- claimed run: queue index, run id, then as a start ('op' for a control operation, which the
-- worker carries out itself); per run an enqueue started for the worker (its inbox): 0, the
-- inbox entry.
-- A run the worker holds stays on its runs list until it is finished: the list, in the order
-- the worker runs them, is what recovery gives back if the worker is lost (recover.lua).
-- A worker claims at most a quarter of what a queue holds (at least one), so that the last
-- runs of a queue - often long ones that wait on a dependency - spread over idle workers.
load_globals(4, 1)
local runs, rqworker, inbox, idle = KEYS[2], KEYS[3], KEYS[12], KEYS[13]
local QKEYS, QN = 14, 6  -- queue qi's keys are KEYS[QKEYS + (qi - 1) * QN + 1 ..]
local ME = {name = G.worker, packed = G.worker_packed, runs = runs}
local nq, control = tonumber(ARGV[5]), tonumber(ARGV[6])
local T = {}
for i = 1, 12 do T[i] = ARGV[6 + i] end
local nfin, nstart, nclaim = tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21])
local waits = ARGV[22] == '1'
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

-- The run block of a run claimed from queue qi: its keys made from the templates.
local function claimed_block(id, qi)
  local sid = string.match(id, '^(.*)%-[^%-]*$') or ''  -- as keys.session_of
  local S = G.sessions[sid]
  if not S then
    S = {sid = sid, session = T[3] .. sid .. T[4], history = T[5] .. sid .. T[6],
      chan = T[7] .. sid .. T[8], running = T[9] .. sid .. T[10], held = T[11] .. sid .. T[12]}
    G.sessions[sid] = S
  end
  local q = QKEYS + (qi - 1) * QN
  return {job = T[1] .. id .. T[2], S = S, session = S.session, sid = sid, running = S.running,
    held = S.held, wip = KEYS[q + 3], finished = KEYS[q + 4], failed = KEYS[q + 5],
    queue = KEYS[q + 1], wake = KEYS[q + 2]}
end

local off = QKEYS + 1 + nq * QN
local a = 23
for _ = 1, nfin do
  local result, terminating = finish(run_block(off, ARGV[a + 1]), ARGV[a], ARGV[a + 2],
    ARGV[a + 3], ARGV[a + 4])
  reply[#reply + 1] = result
  reply[#reply + 1] = terminating
  off = off + 11
  a = a + 5
end
local first = nil  -- the first run this call starts
for _ = 1, nstart do
  local r = start(run_block(off, ARGV[a + 1]), ARGV[a], ME)
  if r[1] == 'run' then first = first or ARGV[a] end
  for _, v in ipairs(r) do reply[#reply + 1] = v end
  off = off + 11
  a = a + 2
end
local want = nclaim
local handed = {}
if want > 0 then
  -- runs an enqueue started for us while we waited, not taken by our BLPOP yet
  handed = redis.call('LRANGE', inbox, 0, -1)
  if #handed > 0 then
    redis.call('DEL', inbox, KEYS[14])
    for _, entry in ipairs(handed) do
      reply[#reply + 1] = 0
      reply[#reply + 1] = entry
      local ok, e = pcall(cmsgpack.unpack, entry)  -- a bad entry: the worker says why
      if ok and type(e) == 'table' then first = first or e[1] end
    end
    want = want - #handed
  end
end
for qi = 1, nq do
  local q = QKEYS + (qi - 1) * QN
  if want <= 0 and #handed == 0 then break end
  local held = redis.call('LLEN', KEYS[q + 1])
  -- (when the inbox filled the batch, queues are only looked at: a wake this worker took
  -- is passed on)
  local ids = held > 0 and want > 0 and redis.call('LPOP', KEYS[q + 1], math.min(want, math.max(1, math.floor(held / 4))))
  if ids then
    for _, id in ipairs(ids) do
      redis.call('RPUSH', runs, id)
      reply[#reply + 1] = qi
      reply[#reply + 1] = id
      local r = {'op', false, false, false, 0}
      if qi ~= control then r = start(claimed_block(id, qi), id, ME) end
      if r[1] == 'run' then first = first or id end
      for _, v in ipairs(r) do reply[#reply + 1] = v end
    end
    want = want - #ids
    held = held - #ids
  end
  if held > 0 then
    -- more is waiting: wake the next idle worker too
    redis.call('LPUSH', KEYS[q + 2], '1')
    redis.call('LTRIM', KEYS[q + 2], 0, 0)
  end
end
if waits and want == nclaim then
  -- nothing to do: wait idle, at the back of each run queue's line (not the control queue's:
  -- its operations are claimed, not handed)
  redis.call('SADD', idle, G.worker)
  for qi = 1, nq do
    if qi ~= control then
      local line = KEYS[QKEYS + (qi - 1) * QN + 6]
      redis.call('LREM', line, 0, G.worker)
      redis.call('RPUSH', line, G.worker)
    end
  end
elseif waits then
  redis.call('SREM', idle, G.worker)
end
-- what the worker goes on to run (for RQ's view of it), or nothing
local current = ARGV[a]
if current == '' then current = first end
if current then
  redis.call('HSET', rqworker, 'current_job', current)
else
  redis.call('HDEL', rqworker, 'current_job')
end
flush()
return reply
