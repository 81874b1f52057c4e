-- A worker's step, one round trip: finish the runs it ran, start runs it holds, then claim
-- and start more from its queues - so that an idle worker's wake is followed by one call,
-- and a busy one finishes its last run and takes the next batch in the same call.
-- Its contract (common/scripts/step.py STEP): the worker's runs list, RQ worker hash, inbox,
-- the idle workers set and the run last handed to it (see prelude `hand`); a `queue`
-- key block per queue it serves, in priority order (list, wake, RQ's started, finished and
-- failed registries, its line of idle workers); a `run` key block per finish, then per
-- start; a `finish` argument block (id, sid, outcome, payload, duration_ms) per finish and a
-- `start` one (id, sid) per start; `nclaim` more to claim; `waits` (1: a claim that finds
-- nothing lists the worker as waiting idle, for enqueues to hand it a run); `control`, the
-- control queue's index (0: none); `current`, the run the worker goes on to ('' for none:
-- the first run this call starts, if any).
-- Returns, per finish: result, terminating (1: its session is being destroyed), waited_on
-- (1: it ended and runs wait on it - see control.lua resolve); per start: result, data, sq,
-- timeout, attempt; per claimed run: queue index, run id, then as a start ('op' for a
-- control operation, which the worker carries out itself); per run an enqueue started for
-- the worker (its inbox): 0, the inbox entry; last, -1 if `rq suspend` refused the claim (the
-- worker needs no call of its own to know it).
-- A run the worker holds stays on its runs list until it is finished: the list, in the order
-- the worker runs them, is what recovery gives back if the worker is lost (recover.lua).
-- A worker claims at most a quarter of what a queue holds (at least one), so that the last
-- runs of a queue - often long ones that wait on a dependency - spread over idle workers.
load_globals()
G.defer = true  -- the moves of a session's runs written once per count (prelude `settle`)
local runs, rqworker, inbox, idle = K.runs, K.rq_worker, K.inbox, K.idle_workers
local ME = {name = G.worker, packed = G.worker_packed, runs = runs}
local nq, control = A.nqueues, A.control
local nfin, nstart, nclaim = A.nfinish, A.nstart, A.nclaim
local waits = A.waits == 1
local reply = {}
-- A step that finishes or starts many runs takes them off (puts them on) RQ's started
-- registries and their sessions' running sets, and adds the succeeded to RQ's finished
-- registries, in one command per key after them all (prelude `gathered`; the finishes'
-- before any start: a run given back may start again in this very step). One run writes at
-- once. The finished runs, first on the runs list in the order finished (the worker runs
-- them in list order), leave it by one LTRIM.
if nfin > 1 then G.gather = {} end
local trimmed = false
if nfin > 1 then
  local head = redis.call('LRANGE', runs, 0, nfin - 1)
  trimmed = #head == nfin
  for i = 1, nfin do
    if not trimmed then break end
    trimmed = head[i] == AB.finish(i).id
  end
  if trimmed then redis.call('LTRIM', runs, nfin, -1) end
end
local after_finishes = gathered

local function finish(B, id, outcome, payload, duration_ms)
  local j = redis.call('HMGET', B.job, 'state', 'worker_name', 'retries_left', 'attempts',
    'children', 'status')
  if not trimmed then redis.call('LREM', runs, 1, id) end
  if not j[1] and redis.call('SREM', B.running, id) == 1 then
    -- its RQ job was deleted while it ran (Job.delete): it ends canceled, out of RQ's
    -- started registry (whatever attempt it was)
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', B.wip, '+inf', '+inf')) do
      if string.sub(m, 1, #id + 1) == id .. ':' then redis.call('ZREM', B.wip, m) end
    end
    move(B, 'started', 'canceled')
    emit(B, 'task.canceled', id, map({'reason', P('its RQ job was deleted while it ran')}))
    local status = sess(B).status or redis.call('HGET', B.session, 'status')
    sess(B).status = status
    if status == 'Terminating' then return 'canceled', 1, 0 end
    return 'canceled', 0, 0
  end
  if j[1] ~= 'started' or j[2] ~= G.worker then
    return 'stale', 0, 0  -- recovered, canceled or destroyed while it ran: not ours to record
  end
  local attempts = num(j[4])
  after_finishes('ZREM', B.wip, id .. ':' .. (j[4] or '0'))  -- (see prelude NUMSTR)
  after_finishes('SREM', B.running, id)
  local status = sess(B).status or redis.call('HGET', B.session, 'status')
  sess(B).status = status
  local result
  if j[6] == 'canceled' then
    -- canceled with RQ while it ran (Job.cancel): whatever it did, it ends canceled
    cancel_run(B, id, 'started', 'canceled with RQ')
    result = 'canceled'
  elseif outcome == 'succeeded' then
    redis.call('HSET', B.job, 'state', 'succeeded', 'status', 'finished', 'ended_at',
      G.now_iso, 'result', payload)
    after_finishes('ZADD', B.finished, '+inf', id)
    move(B, 'started', 'succeeded')
    emit(B, 'task.succeeded', id, '\129\171duration_ms' .. P(tonumber(duration_ms)))
    result = 'succeeded'
  elseif outcome == 'requeue' then
    -- given back unrun, or stopped by a worker shutdown: the attempt is not charged
    redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'attempts', attempts - 1)
    push_run(B, id, true)
    move(B, 'started', 'queued')
    emit(B, 'task.queued', id, map({'reason', payload}))
    result = 'requeued'
  elseif outcome == 'canceled' or status == 'Terminating' or status == 'Stopped' then
    redis.call('HSET', B.job, 'error', payload)
    cancel_run(B, id, 'started', 'stopped while running')
    result = 'canceled'
  else
    result = fail_or_retry(B, id, payload, attempts, num(j[3]), outcome == 'failed',
      K.schedule)
  end
  unthrottle(B)  -- a slot of its session is free
  local waited_on = 0
  if j[5] and result ~= 'requeued' and result ~= 'retrying' then waited_on = 1 end
  if status == 'Terminating' then return result, 1, waited_on end
  maybe_end(B)
  return result, 0, waited_on
end

-- The keys of queue qi's block, made once each when first used (a step that only finishes
-- runs uses none).
local QK = setmetatable({}, {__index = function(t, qi)
  local q = KB.queue(qi)
  t[qi] = q
  return q
end})

for i = 1, nfin do
  local f = AB.finish(i)
  local result, terminating, waited_on = finish(run_block(KB.run(i), f.sid), f.id, f.outcome,
    f.payload, f.duration_ms)
  reply[#reply + 1] = result
  reply[#reply + 1] = terminating
  reply[#reply + 1] = waited_on
end
write_gathered()
G.gather = G.gather or {}  -- (the starts' writes: sent before flush)
local first = nil  -- the first run this call starts
for i = 1, nstart do
  local st = AB.start(i)
  local B = run_block(KB.run(nfin + i), st.sid)
  local r = start(B, st.id, ME)
  if r[1] == 'run' then first = first or st.id end
  if r[1] == 'run' and redis.call('GET', K.handed) == st.id then
    -- handed to us and taken up from our runs list (its inbox entry was lost): it shows now
    redis.call('DEL', K.handed)
    took(sess(B), st.id, r[5])
  end
  for _, v in ipairs(r) do reply[#reply + 1] = v end
end
local want = nclaim
local handed = {}
local suspended = false
if want > 0 then
  -- runs an enqueue started for us while we waited, not taken by our BLPOP yet
  handed = redis.call('LRANGE', inbox, 0, -1)
  if #handed > 0 then
    redis.call('DEL', inbox)
    local handed_id = redis.call('GET', K.handed)
    for _, entry in ipairs(handed) do
      reply[#reply + 1] = 0
      reply[#reply + 1] = entry
      local ok, e = pcall(cmsgpack.unpack, entry)  -- a bad entry: the worker says why
      if ok and type(e) == 'table' and type(e[1]) == 'string' then
        first = first or e[1]
        local sid = session_of(e[1])
        local S = G.sessions[sid]
        if not S then
          S = {sid = sid, session = key_session(sid), history = key_history(sid),
            chan = key_events_channel(sid)}
          G.sessions[sid] = S
        end
        took(S, e[1], tonumber(e[6]) or 1)
        -- (a bad entry's run is started again from our runs list: it shows then)
        if e[1] == handed_id then redis.call('DEL', K.handed) end
      end
    end
    want = want - #handed
  end
  if want > 0 and redis.call('EXISTS', K.suspended) == 1 then
    want = 0  -- `rq suspend`: no new run is claimed (nor handed: not listed idle) until resumed
    suspended = true
  end
end
-- Claims (only a call that claims, or was handed runs, makes their functions: each closure
-- costs Redis at every call that makes it)
if want > 0 or #handed > 0 then
  -- The run block of a run claimed from queue qi (`sid`: its session, if known): its keys
  -- made by the key builders, those of its session once per session and queue (a batch
  -- claims many runs of one session) and reached through a metatable, not copied.
  local CB = {}
  local function claimed_block(id, qi, sid)
    sid = sid or session_of(id)
    local q = QK[qi]
    CB[qi] = CB[qi] or {}
    local base = CB[qi][sid]
    if not base then
      base = {__index = run_block({job = false, session = key_session(sid), history = key_history(sid),
        chan = key_events_channel(sid), running = key_session_running(sid),
        held = key_session_held(sid), started = q.started, finished = q.finished,
        failed = q.failed, queue = q.list, wake = q.wake,
        squeue = key_session_queue(sid, AB.queue(qi).name),
        throttled = key_session_throttled(sid)}, sid)}
      CB[qi][sid] = base
    end
    return setmetatable({job = key_job(id)}, base)
  end

  -- Take run `id` from queue qi's line onto our runs list (`listed`: it is there already) and
  -- start it (an operation of the control queue is carried out by the worker itself).
  local function claim(qi, id, B, listed)
    if not listed then redis.call('RPUSH', runs, id) end
    reply[#reply + 1] = qi
    reply[#reply + 1] = id
    local r = {'op', false, false, false, 0}
    if qi ~= control then r = start(B or claimed_block(id, qi), id, ME) end
    if r[1] == 'run' then first = first or id end
    for _, v in ipairs(r) do reply[#reply + 1] = v end
  end

  -- Claim up to `want` runs from queue qi's line, sessions in turn (fair share, prelude): the
  -- session of each run taken puts its next waiting run at the back of the line; a session
  -- alone in the line gives a batch at once - at most a quarter of what it has waiting (at
  -- least one), so that the last runs of a queue spread over idle workers. A session at its
  -- max_running leaves the line until one of its runs ends. Returns how many were taken, and
  -- how many runs the line holds after (nil: not known).
  local function claim_from(qi, want)
    local q = QK[qi]
    local got = 0
    local inline = nil  -- the line's length, once read: kept up to date by what we pop and push
    while got < want do
      local id = redis.call('LPOP', q.list)
      if not id then
        inline = 0
        break
      end
      if inline then inline = inline - 1 end
      if qi == control then
        claim(qi, id, nil)
        got = got + 1
      else
        local B = claimed_block(id, qi)
        local S = sess(B)
        if not S.status and S.cap == nil then
          -- its status, cap (see room) and first start (prelude show_start) in one read
          local v = redis.call('HMGET', S.session, 'status', 'max_running', 'started_at')
          S.status, S.cap, S.started_at = v[1], tonumber(v[2]) or false, v[3]
        end
        local batch = {id}
        if S.status then  -- (a destroyed session's leftover entry is taken, and skipped)
          local left = room(S)
          local mine = redis.call('HINCRBY', S.session, line_field(B), '-1')
          if mine < 0 then
            -- put in the line by someone else (`rq requeue` pushes a job id there itself)
            redis.call('HSET', S.session, line_field(B), 0)
            mine = 0
          end
          if left ~= nil and left <= 0 then
            park(B, id)
            if mine <= 0 then
              redis.call('SADD', B.throttled, throttle_entry(B))
              S.unthrottled = nil  -- (see prelude unthrottle)
            end
            batch = {}
          elseif mine <= 0 then
            local more = want - got - 1
            if left ~= nil then more = math.min(more, left - 1) end
            if more > 0 and not inline then inline = redis.call('LLEN', q.list) end
            if more > 0 and inline == 0 then
              local waiting = redis.call('LLEN', B.squeue)
              more = math.min(more, math.floor((waiting + 1) / 4) - 1)
              if more > 0 then
                for _, x in ipairs(redis.call('LPOP', B.squeue, more)) do batch[#batch + 1] = x end
              end
            end
            local nxt = redis.call('LPOP', B.squeue)
            if nxt then
              redis.call('RPUSH', q.list, nxt)
              if inline then inline = inline + 1 end
              redis.call('HINCRBY', S.session, line_field(B), '1')
            end
          end
        end
        for c = 1, #batch, 1000 do
          redis.call('RPUSH', runs, unpack(batch, c, math.min(c + 999, #batch)))
        end
        for i, rid in ipairs(batch) do
          claim(qi, rid, i == 1 and B or claimed_block(rid, qi, S.sid), true)
          got = got + 1
        end
      end
    end
    -- (RQ's queue depth, as `rq info` shows it: see enqueue.lua)
    if got > 0 and qi ~= control then redis.call('HINCRBY', G.depths, q.list, int(-got)) end
    return got, inline
  end

  for qi = 1, nq do
    local q = QK[qi]
    if want <= 0 and #handed == 0 then break end
    -- (when the inbox filled the batch, queues are only looked at: a wake this worker took
    -- is passed on)
    local inline = nil
    if want > 0 then
      local got
      got, inline = claim_from(qi, want)
      want = want - got
    end
    if (inline or redis.call('LLEN', q.list)) > 0 then
      -- more is waiting: wake the next idle worker too
      wake_list(q.wake)
    end
  end
end
if waits and want == nclaim then
  -- nothing to do: wait idle, at the back of each run queue's line (not the control queue's:
  -- its operations are claimed, not handed)
  redis.call('SADD', idle, G.worker)
  for qi = 1, nq do
    if qi ~= control then
      local line = QK[qi].idle_line
      redis.call('LREM', line, 0, G.worker)
      redis.call('RPUSH', line, G.worker)
    end
  end
elseif waits then
  redis.call('SREM', idle, G.worker)
end
-- what the worker goes on to run (for RQ's view of it), or nothing
local current = A.current
if current == '' then current = first end
-- (RQ's worker states, not a run's: `rq info` shows busy/idle)
local RQ_WORKER = {busy = 'busy', idle = 'idle'}
-- (`holds`: whether the worker may go on past `current` without a word - recover.lua)
if current then
  redis.call('HSET', rqworker, 'current_job', current, 'state', RQ_WORKER.busy, 'holds', A.holds)
else
  redis.call('HDEL', rqworker, 'current_job')
  redis.call('HSET', rqworker, 'state', RQ_WORKER.idle, 'holds', A.holds)
end
if suspended then reply[#reply + 1] = -1 end
write_gathered()
flush()
return reply
