-- Session control (SPEC §3): pause, play, step, stop, restart, drop (remove/forget), and the
-- scheduler's work - resolve (runs waiting on dependencies), fire (scheduled runs) and settle
-- (runs RQ's own tools deleted or canceled) - each one atomic step on one session.
-- Its contract (common/scripts/control.py CONTROL): the schedule zset, the runs waiting on
-- dependencies, the session's keys; a `run` key block per run of the plan; then extra keys
-- the plan names by index (KX); `op`, `sid`, `plan` (msgpack map; plan.runs = run ids).
load_globals()
local SCHEDULE, WAITING = K.schedule, K.waiting
local op, sid = A.op, A.sid
local plan = cmsgpack.unpack(A.plan)
local S = {sid = sid, session = K.session, history = K.history, chan = K.chan,
  running = K.running, held = K.held}
G.sessions[sid] = S
local TASKS, NAMES, TASK_KEYS = K.tasks, K.task_names, K.task_keys
local ids = plan.runs or {}
local blocks = {}
for r, id in ipairs(ids) do blocks[r] = run_block(KB.run(r), sid) end

S.status = redis.call('HGET', S.session, 'status')
if not S.status then return {'gone'} end

-- Leave Paused (or an ended status) for Running, or Pending when nothing ever started.
local function resume()
  local was = S.status
  if redis.call('HEXISTS', S.session, 'started_at') == 1 then
    set_status(S, 'Running')
  else
    set_status(S, 'Pending')
  end
  redis.call('HDEL', S.session, 'step', 'finished_at')
  if was ~= S.status then emit(S, 'session.resumed', nil, map({'from', P(was)})) end
end

-- Cancel a run that has not started (any waiting state); false if it is not waiting.
local function cancel_waiting(B, id, reason)
  local j = redis.call('HMGET', B.job, 'state', 'cron')
  local st = j[1]
  if st ~= 'queued' and st ~= 'deferred' and st ~= 'held' then return false end
  if st == 'deferred' then
    redis.call('ZREM', SCHEDULE, id)
    redis.call('SREM', WAITING, id)
    if j[2] then redis.call('HINCRBY', S.session, 'cron', -1) end
  elseif st == 'held' then
    redis.call('ZREM', S.held, id)  -- else play/step would release it again
  end
  cancel_run(B, id, st, reason)
  return true
end

local reply = {'ok'}

if op == 'pause' then
  -- an ended session has nothing left to hold (an add makes it run again, SPEC §2)
  if S.status == 'Terminating' or ENDED[S.status] then return {'no', S.status} end
  if S.status ~= 'Paused' then
    set_status(S, 'Paused')
    -- runs numbered up to here were added before the pause (see step)
    redis.call('HSET', S.session, 'paused_at', redis.call('HGET', S.session, 'next') or 0)
    emit(S, 'session.paused', nil, nil)
  end

elseif op == 'play' then
  if ENDED[S.status] then return {'no', S.status} end  -- (as pause)
  if S.status ~= 'Paused' then return {'ok'} end  -- nothing is held: nothing to do
  local held = redis.call('ZRANGE', S.held, 0, -1)
  if #held ~= #ids then return {'retry'} end
  for r, id in ipairs(ids) do if held[r] ~= id then return {'retry'} end end
  resume()
  redis.call('DEL', S.held)
  for r = #ids, 1, -1 do
    -- back to the front of their queues, oldest first
    if redis.call('HGET', blocks[r].job, 'state') == 'held' then
      release(blocks[r], ids[r], 'held', nil, SCHEDULE, true)
    end
  end
  maybe_end(S)

elseif op == 'step' then
  if S.status ~= 'Paused' then return {'no', S.status} end
  -- Runs queued before the pause that no worker has parked yet are older than any run added
  -- since (and younger than those parked before them): while some are left and the oldest
  -- held run was added after the pause, the next one a worker takes is the one that passes.
  local first = redis.call('ZRANGE', S.held, 0, 0, 'WITHSCORES')
  local paused_at = num(redis.call('HGET', S.session, 'paused_at'))
  local queued = num(redis.call('HGET', S.session, 'queued'))
  if queued > 0 and (not first[1] or tonumber(first[2]) > paused_at) then
    ids = {}
  end
  if #ids == 0 then
    if first[1] and queued == 0 then return {'retry'} end
    redis.call('HINCRBY', S.session, 'step', 1)
  else
    if redis.call('ZRANGE', S.held, 0, 0)[1] ~= ids[1] then return {'retry'} end
    redis.call('ZREM', S.held, ids[1])
    local B = blocks[1]
    redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'pass', '1')
    push_run(B, ids[1], true)
    move(B, 'held', 'queued')
    emit(S, 'task.queued', ids[1], map({'reason', P('step')}))
  end

elseif op == 'stop' then
  -- the status was set when the stop was accepted (request.lua); cancel what waits, report
  -- what runs (the caller stops those) - of the runs added before the stop: one added since
  -- (a later epoch) made the session run again, and runs
  local stops = num(redis.call('HGET', S.session, 'stops'))
  for r, id in ipairs(ids) do
    local B = blocks[r]
    if num(redis.call('HGET', B.job, 'epoch')) < stops and not cancel_waiting(B, id, 'session stopped') then
      local j = redis.call('HMGET', B.job, 'state', 'worker_name')
      if j[1] == 'started' then
        reply[#reply + 1] = id
        reply[#reply + 1] = j[2] or ''
      end
    end
  end
  if S.status == 'Stopped' or S.status == 'Failed' then
    redis.call('HSET', S.session, 'cron', 0)
    redis.call('HSETNX', S.session, 'finished_at', G.now_ms)
  end
  maybe_end(S)  -- resumed by an add meanwhile, and what was added is already done

elseif op == 'restart' then
  local ok = {succeeded = not plan.failed_only, canceled = not plan.failed_only, failed = true}
  local again = {}
  -- A cron task fires as runs of its own, named as the task (see fire): the firings that
  -- ended are its schedule's past, not run again; its schedule starts again - its last
  -- firing, canceled by a stop, waits for the task's next firing time (plan.due: cron
  -- expression -> ms) - unless a firing of it still waits or runs.
  local chains, rearm = {}, {}
  for r, id in ipairs(ids) do
    local B = blocks[r]
    local j = redis.call('HMGET', B.job, 'state', 'deps', 'origin', 'cron')
    if j[4] then
      local name = redis.call('HGET', TASKS, id) or id
      local c = chains[name]
      if not c then
        c = {}
        chains[name] = c
        rearm[#rearm + 1] = c
      end
      c.live = c.live or LIVE[j[1] or ''] or false
      c.r, c.state, c.due = r, j[1], plan.due and plan.due[j[4]]
    elseif ok[j[1] or ''] or (j[1] == 'canceled' and j[2]) then
      -- with failed_only, runs canceled because a dependency failed are judged again too
      again[#again + 1] = {B, id, j[1], j[2]}
    end
  end
  for i = #rearm, 1, -1 do
    local c = rearm[i]
    if c.live or c.state ~= 'canceled' or plan.failed_only or not c.due then
      table.remove(rearm, i)
    end
  end
  if #again > 0 or #rearm > 0 then
    if S.status ~= 'Running' and S.status ~= 'Pending' and S.status ~= 'Paused' then resume() end
    -- run `id` afresh: its last attempt's outcome (and the fields named) gone, its retries
    -- given back
    local function afresh(B, id, ...)
      redis.call('HDEL', B.job, 'result', 'error', 'ended_at', 'started_at', 'worker_name', ...)
      local retries = redis.call('HGET', B.job, 'retries')
      if retries then redis.call('HSET', B.job, 'retries_left', retries) end
      redis.call('ZREM', B.finished, id)
      redis.call('ZREM', B.failed, id)
    end
    for _, a in ipairs(again) do
      local B, id, st, deps = a[1], a[2], a[3], a[4]
      afresh(B, id)
      emit(B, 'task.queued', id, map({'reason', P('restart')}))
      if deps then
        -- waits on its dependencies again (resolve decides)
        redis.call('HSET', B.job, 'state', 'deferred', 'status', 'deferred')
        move(B, st, 'deferred')
        redis.call('SADD', WAITING, id)
        reply[#reply + 1] = id
      else
        redis.call('HSET', B.job, 'state', st)
        release(B, id, st, nil, SCHEDULE, false)
      end
    end
    for _, c in ipairs(rearm) do
      -- a firing as fire makes one: no attempt yet (its firing makes the next one)
      local B, id = blocks[c.r], ids[c.r]
      afresh(B, id, 'attempts', 'number_of_retries')
      redis.call('HSET', B.job, 'due', c.due)
      redis.call('HINCRBY', S.session, 'cron', 1)
      emit(B, 'task.queued', id, map({'reason', P('restart'), 'state', P('deferred'),
        'due', P(c.due / 1000.0)}))
      release(B, id, 'canceled', c.due, SCHEDULE, false)
    end
  end

elseif op == 'resolve' then
  -- runs waiting on dependencies whose parents may have ended; plan.parents[r]: per parent
  -- of run r, its job's KEYS index, or its state when it is of another partition (dep_state)
  for r, id in ipairs(ids) do
    local B = blocks[r]
    local j = redis.call('HMGET', B.job, 'state', 'deps', 'run_if', 'due', 'cond_silent', 'cron')
    if j[1] == 'deferred' and j[2] and not redis.call('ZSCORE', SCHEDULE, id) then
      local deps = cmsgpack.unpack(j[2])
      local states = {}
      for i, ref in ipairs(plan.parents[r]) do states[i] = dep_state(ref) end
      local verdict, reason = judge(j[3] or 'succeeded', deps, states)
      if verdict == 'ready' then
        redis.call('SREM', WAITING, id)
        release(B, id, 'deferred', tonumber(j[4]), SCHEDULE, false)
      elseif verdict ~= 'wait' then
        redis.call('SREM', WAITING, id)
        if j[6] then redis.call('HINCRBY', S.session, 'cron', -1) end
        refuse(B, id, 'deferred', verdict, reason, j[5] == '1')
        reply[#reply + 1] = id  -- ended: its own dependents need resolving
      end
    elseif j[1] ~= 'deferred' then
      redis.call('SREM', WAITING, id)
    end
  end
  maybe_end(S)

elseif op == 'fire' then
  -- scheduled runs that are due; plan.next[r] = {next id, due ms, KEYS index} for cron runs
  for r, id in ipairs(ids) do
    local B = blocks[r]
    if redis.call('ZREM', SCHEDULE, id) == 1 and redis.call('HGET', B.job, 'state') == 'deferred' then
      release(B, id, 'deferred', nil, SCHEDULE, false)
      local nx = plan.next and plan.next[r]
      if nx and S.status ~= 'Terminating' and S.status ~= 'Stopped' then
        local fields = redis.call('HGETALL', B.job)
        local copy = {}
        local skip = {state = 1, status = 1, attempts = 1, result = 1, error = 1, started_at = 1,
          ended_at = 1, worker_name = 1, due = 1, enqueued_at = 1, pass = 1, children = 1}
        for i = 1, #fields, 2 do
          if not skip[fields[i]] then
            copy[#copy + 1] = fields[i]
            copy[#copy + 1] = fields[i + 1]
          end
        end
        local nkey = KX(nx[3])
        redis.call('HSET', nkey, 'state', 'deferred', 'status', 'deferred', 'due', nx[2],
          'enqueued_at', G.now_iso, unpack(copy))
        local name = redis.call('HGET', TASKS, id) or id
        redis.call('HSET', TASKS, nx[1], name)
        move(B, nil, 'deferred')
        redis.call('ZADD', SCHEDULE, nx[2], nx[1])
        emit(S, 'task.queued', nx[1], map({'name', P(name), 'state', P('deferred'),
          'due', P(nx[2] / 1000.0)}))
      elseif nx then
        redis.call('HINCRBY', S.session, 'cron', -1)
      end
    end
  end
  redis.call('HSET', S.session, 'cycle_at', G.now_ms)

elseif op == 'drop' then
  -- remove (plan.delete) or forget tasks; a running one is refused
  for r, id in ipairs(ids) do
    local B = blocks[r]
    if redis.call('HEXISTS', TASKS, id) == 0 then return {'unknown', id} end
    if redis.call('HGET', B.job, 'state') == 'started' then return {'running', id} end
  end
  for r, id in ipairs(ids) do
    local B = blocks[r]
    local j = redis.call('HMGET', B.job, 'state', 'key')
    if j[1] then
      cancel_waiting(B, id, 'removed from the session')
      local st = redis.call('HGET', B.job, 'state')
      move(B, st, nil)
      local name = redis.call('HGET', TASKS, id)
      redis.call('HDEL', TASKS, id)
      if name and redis.call('HGET', NAMES, name) == id then redis.call('HDEL', NAMES, name) end
      if j[2] and redis.call('HGET', TASK_KEYS, j[2]) == id then
        redis.call('HDEL', TASK_KEYS, j[2])
      end
      if plan.delete then
        redis.call('DEL', B.job)
        redis.call('ZREM', B.finished, id)
        redis.call('ZREM', B.failed, id)
      end
    end
  end
  maybe_end(S)

elseif op == 'settle' then
  -- RQ's tools changed runs behind our back (`rq empty`, Job.delete, Job.cancel): every run
  -- of the session is read, and the session's live counters set from what its runs are. A
  -- waiting run RQ canceled is canceled; a run whose job hash is gone, and that the counters
  -- still hold live, ends canceled (left as a canceled job hash, so that it is settled once)
  local LIVE_STATES = {'queued', 'deferred', 'held', 'started'}
  local found = {queued = 0, deferred = 0, held = 0, started = 0}
  local missing = {}
  local orphans = {}  -- started runs no live worker holds (the sweep looked): settled too
  for _, id in ipairs(plan.orphans or {}) do orphans[id] = true end
  local all = redis.call('HKEYS', TASKS)
  for _, id in ipairs(all) do
    local job = key_job(id)
    local j = redis.call('HMGET', job, 'state', 'status')
    if not j[1] then
      if redis.call('EXISTS', job) == 0 then
        if redis.call('SISMEMBER', S.running, id) == 1 and not orphans[id] then
          found.started = found.started + 1  -- its worker's finish settles it (run.lua)
        else
          missing[#missing + 1] = id
        end
      end
    elseif (j[1] == 'queued' or j[1] == 'deferred' or j[1] == 'held') and j[2] == 'canceled' then
      cancel_waiting({job = job, S = S, session = S.session, sid = sid, held = S.held}, id,
        'canceled with RQ')
      reply[#reply + 1] = id
    elseif found[j[1]] then
      found[j[1]] = found[j[1]] + 1
    end
  end
  -- how many runs each live counter holds that no run is in: the missing runs were those
  local extra = {}
  for _, st in ipairs(LIVE_STATES) do
    extra[st] = num(redis.call('HGET', S.session, st)) - found[st]
  end
  local function take(st)
    if extra[st] > 0 then
      extra[st] = extra[st] - 1
      return st
    end
    return nil
  end
  for _, id in ipairs(missing) do
    local was
    if redis.call('SREM', S.running, id) == 1 then was = take('started')
    elseif redis.call('ZREM', S.held, id) == 1 then was = take('held')
    elseif redis.call('ZREM', SCHEDULE, id) + redis.call('SREM', WAITING, id) > 0 then
      was = take('deferred')
    else
      was = take('queued') or take('deferred') or take('held') or take('started')
    end
    if was then
      redis.call('HSET', key_job(id), 'state', 'canceled', 'status', 'canceled', 'ended_at',
        G.now_iso, 'error', P('its RQ job was deleted'))
      move(S, was, 'canceled')
      emit(S, 'task.canceled', id, map({'reason', P('its RQ job was deleted')}))
      reply[#reply + 1] = id
    end
  end
  -- what is left over is drift: the counter is set to the runs it counts
  for _, st in ipairs(LIVE_STATES) do
    if extra[st] ~= 0 then move(S, st, nil, extra[st]) end
  end
  maybe_end(S)
end

flush()
return reply
