-- Create sessions and add runs to them, in one atomic step (SPEC §2: nothing is lost, and
-- info() sees them at once; SPEC §3: add is idempotent by key, names follow the session's
-- task_pre_exist policy, dependencies and schedules defer a run).
-- Its contract (common/scripts/enqueue.py ENQUEUE): the session index hash, RQ's set of
-- queues, the schedule zset, the set of runs waiting on dependencies, the persistent names
-- hash, the idle workers set, the live workers zset; a `session` key block per session, a
-- `queue` one per queue, a `job` one per run; then extra job keys (parents, replaced tasks)
-- that the runs' options name by index (KX); `fresh_ms`: how old a worker's heartbeat may be
-- for it to be handed a run; `plan` (msgpack):
--   plan = [sessions, queue names, runs, claim, shared, retention, options]; claim: a
--   persistent name (owner/name) the one new session takes in the names hash, '' for none;
--   shared: lists of job fields (field, value, ...) that runs share; retention: ms the new
--   sessions are kept after they end (their hash's retention_ms, prelude `set_status`), nil:
--   until destroyed; options: the runs' options, each sent once (runs alike share theirs)
--   session = [sid, is_new, record bytes, name]
--   runs = a list per field, a value per run (enqueue.py _run_columns): [session index, run
--          id, name, state, queue index, options index (0: none), shared index, data, sq,
--          extra job fields (field, value, ...) or nil]
--   options = {key, policy, deps (ids), dep_keys (per parent: its job's KEYS index; for a
--              parent of another partition, its state as read there before the call - prelude
--              `dep_state` - or '' for no task: 'nodep'), run_if, due (ms), cron, silent, old
--              (KEYS index of the task a "replace" removes), old_id}
-- Returns {'ok', run id, final id, final name, ...} (one triple per run whose id or name
-- changed: an existing key or an ignored/renamed name), or {'exists', name} ("raise": nothing
-- written), {'retry'} (a replaced name moved meanwhile), {'running', id} (the task a
-- "replace" would remove is running), {'gone', sid} (no such session, or being destroyed),
-- {'named', sid} (the claimed name is another session's already), {'nodep', run id, parent
-- id} (a dependency names no task, nor a run of this call added before it). Nothing is
-- written unless ok.
load_globals()
local plan = cmsgpack.unpack(A.plan)
local sessions, queue_names = plan[1], plan[2]
local nq, NR = #queue_names, A.nruns
-- the runs' fields, a list each (run r's name is R_NAME[r])
local R_SESSION, R_ID, R_NAME, R_STATE, R_QUEUE, R_OPTS, R_SHARED, R_DATA, R_SQ, R_EXTRA =
  unpack(plan[3], 1, 10)
local OPTIONS = plan[7]
-- run r's options, nil for none
local function opts(r) return OPTIONS[R_OPTS[r]] end
-- the runs the checks of options go over: none when no run has options (a create's, a map's)
local NO = OPTIONS[1] and NR or 0
local CHUNK = 1000
local SCHEDULE, WAITING, NAMES = K.schedule, K.waiting, K.names

-- the HSET arguments of a job hash, per set of shared fields, with the slots of the run's own
-- fields in front: filled for each run in turn, made once
local job_args = {}
for i, fields in ipairs(plan[5]) do
  local a = {'data', false, 'sq', false}
  for _, v in ipairs(fields) do a[#a + 1] = v end
  job_args[i] = a
end

-- call `cmd key` with the values of `list` (from index `from` on), at most CHUNK at a time
local function chunked(cmd, key, list, from)
  for c = from or 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, c, math.min(c + CHUNK - 1, #list)))
  end
end

local function add_to(groups, key, v)
  local g = groups[key]
  if not g then
    g = {}
    groups[key] = g
  end
  g[#g + 1] = v
end

-- A new session's runs queued on queue qi from here up to another session's run take one
-- entry of its in the queue's line (the pushes at the end): counted as they come, written with
-- its record (line_q, line_n: its first queue, most sessions' only one; lines: any other).
local function count_line(B, qi)
  if not B.line_q or B.line_q == qi then
    B.line_q, B.line_n = qi, (B.line_n or 0) + 1
  else
    local more = B.lines or {}
    B.lines = more
    more[qi] = (more[qi] or 0) + 1
  end
end

local S = {}
local any_new = false
for i, s in ipairs(sessions) do
  -- (the block's own table, its keys by name: one table a session, not two)
  local B = KB.session(i)
  B.sid, B.counts, B.task_names, B.ntask_names = s[1], {}, {}, 0
  S[i] = B
  if not s[2] then
    -- a session being destroyed takes no more work (its destroy would miss it)
    local status = redis.call('HGET', S[i].session, 'status')
    if not status or status == 'Terminating' then return {'gone', s[1]} end
  elseif not any_new then
    any_new = true
    -- a new session that exists already: this very call was carried out before and its
    -- reply lost (the client sent it again); the script is atomic, so all of it was. Its
    -- first new session tells for all: session ids are random, new to the call.
    if redis.call('EXISTS', S[i].session) == 1 then return {'ok'} end
  end
end
-- A parent must name a task: one written before, or a run of this call added before it.
-- (the runs of this call are listed once one has parents: most calls have none)
local this_call = nil
for r = 1, NO do
  local o = opts(r)
  if o and o.deps then
    if not this_call then
      this_call = {}
      for j = 1, r - 1 do this_call[R_ID[j]] = true end
    end
    for i, pid in ipairs(o.deps) do
      -- (a parent of another partition: its state, read before the call; '' for no task)
      local ref = o.dep_keys[i]
      if not this_call[pid] and (ref == ''
          or type(ref) == 'number' and redis.call('EXISTS', KX(ref)) == 0) then
        return {'nodep', R_ID[r], pid}
      end
    end
  end
  if this_call then this_call[R_ID[r]] = true end
end
local claim = plan[4]
if claim and claim ~= '' then
  -- the name and the session it names are made in one step: no one sees one without the other
  local owner_of = redis.call('HGET', NAMES, claim)
  if owner_of then return {'named', owner_of} end
  redis.call('HSET', NAMES, claim, sessions[1][1])
end
local Q = {}
for q = 1, nq do Q[q] = KB.queue(q) end
-- the session field counting a session's entries in queue qi's line (made on first use)
local function line_of(qi)
  local q = Q[qi]
  if not q.line then q.line = line_field({queue = q.list}) end
  return q.line
end
local job_key = KB.job_job

-- The names of each session: read in bulk before the checks (HMGET), looked up in `name_of`
-- then, and those this call gives written in bulk at the end (`given`, one HSET a session,
-- `ngiven` long); made for a session with a run under a name policy (most runs have none).
-- `again`: the runs (by index) named as a run of theirs before them.
local again = {}
do
  local wanted, nwanted = {}, {}
  for r = 1, NO do
    local o = opts(r)
    if o and o.policy then
      local si, name = R_SESSION[r], R_NAME[r]
      local B = S[si]
      local name_of = B.name_of
      if not name_of then
        name_of = {}
        B.name_of, B.given, B.ngiven = name_of, {}, 0
      end
      if name_of[name] == nil then
        name_of[name] = false
        local w, n = wanted[si], (nwanted[si] or 0) + 1
        if not w then
          w = {}
          wanted[si] = w
        end
        w[n] = name
        nwanted[si] = n
      else
        again[r] = true
      end
    end
  end
  for si, names in pairs(wanted) do
    local B = S[si]
    local name_of = B.name_of
    for c = 1, nwanted[si], CHUNK do
      local got = redis.call('HMGET', B.names, unpack(names, c, math.min(c + CHUNK - 1, nwanted[si])))
      for i, v in ipairs(got) do name_of[names[c + i - 1]] = v end
    end
  end
end
-- The id name `name` of session B stands for, false for none.
local function named(B, name)
  local v = B.name_of[name]
  if v == nil then
    v = redis.call('HGET', B.names, name)
    B.name_of[name] = v
  end
  return v
end

-- Before anything is written: names that must not exist yet, replaced names still in place.
for r = 1, NO do
  local o = opts(r)
  if o and o.policy then
    local B = S[R_SESSION[r]]
    local existing = B.name_of[R_NAME[r]]  -- (read above)
    if existing == R_ID[r] then
      -- the name is this very run's: the call was carried out before, its reply lost
    elseif o.policy == 'raise' and (existing or again[r]) then
      if not (o.key and redis.call('HEXISTS', B.task_keys, o.key) == 1) then
        return {'exists', R_NAME[r]}
      end
    elseif o.policy == 'replace' and existing ~= (o.old_id or false) then
      return {'retry'}
    elseif o.policy == 'replace' and existing and redis.call('HGET', KX(o.old), 'state') == 'started' then
      return {'running', existing}  -- as for remove: stop it first
    end
  end
end

-- Was this call carried out before, its reply lost? Then every run it wrote has its job
-- hash (the script is atomic; run ids are new to each call), and none has otherwise. One run
-- it surely wrote tells for all: one with no key, not named under "ignore" (either may have
-- been skipped). nil: no such run, each run is looked at. A call that makes a session was
-- answered above.
local resent = false
if not any_new then
  resent = nil
  for r = 1, NR do
    local o = opts(r)
    if not (o and (o.key or o.policy == 'ignore')) then
      resent = redis.call('EXISTS', job_key(r)) == 1
      break
    end
  end
end

local sets, index = {}, {}
for i, s in ipairs(sessions) do
  local B = S[i]
  if s[2] then
    index[#index + 1] = B.sid
    index[#index + 1] = s[3]
    B.status = 'Pending'
    B.fresh = true
    add_to(sets, idx('Pending'), B.sid)
    add_to(sets, B.kind, B.sid)
    add_to(sets, B.owner, B.sid)
    emit(B, 'session.created', nil, '\129' .. PK.name .. pstr(s[4]))  -- map({'name', P(s[4])})
  else
    local status = redis.call('HGET', B.session, 'status')
    B.status = status
    B.stops = redis.call('HGET', B.session, 'stops')  -- see request.lua: a stop's epoch
    if status == 'Completed' or status == 'Failed' or status == 'Stopped' then
      set_status(B, 'Running')  -- adding work to an ended session runs it again
      redis.call('HDEL', B.session, 'finished_at')
      emit(B, 'session.resumed', nil, nil)
    end
  end
end
chunked('HSET', K.sessions, index)
for key, members in pairs(sets) do chunked('SADD', key, members) end

-- The name a run gets under its policy, or nil when it is not added ("ignore").
local function settle_name(B, o, id, name, out)
  if not o.policy then return name end
  local existing = B.name_of[name]  -- (read for every run with a policy, above)
  if existing and o.policy == 'ignore' then
    out[#out + 1] = id
    out[#out + 1] = existing
    out[#out + 1] = name
    return nil
  elseif existing and o.policy == 'rename' then
    local n = 1
    while named(B, name .. '-' .. n) do n = n + 1 end
    name = name .. '-' .. n
    out[#out + 1] = id
    out[#out + 1] = id
    out[#out + 1] = name
  elseif existing and o.policy == 'replace' then
    local old = KX(o.old)
    local st = redis.call('HGET', old, 'state')
    local ob = {job = old, S = B, session = B.session}
    if st == 'queued' or st == 'deferred' or st == 'held' then
      if st == 'deferred' then
        redis.call('ZREM', SCHEDULE, existing)
        redis.call('SREM', WAITING, existing)
        if redis.call('HEXISTS', old, 'cron') == 1 then redis.call('HINCRBY', B.session, 'cron', -1) end
      elseif st == 'held' then
        redis.call('ZREM', B.held, existing)
      end
      cancel_run(ob, existing, st, 'replaced by ' .. id)
      st = 'canceled'
    end
    -- it leaves the session, as with forget: its record stays readable by id, uncounted
    if st then move(ob, st, nil) end
    redis.call('HDEL', B.tasks, existing)
  end
  B.name_of[name] = id
  local n = B.ngiven
  B.given[n + 1] = name
  B.given[n + 2] = id
  B.ngiven = n + 2
  return name
end

local out = {'ok'}
local pushes = {}
for q = 1, nq do pushes[q] = {r = {}, n = 0} end
local queued_data = {}  -- the packed data of task.queued events, by state: the last one
for r = 1, NR do
  local B, id, name, state = S[R_SESSION[r]], R_ID[r], R_NAME[r], R_STATE[r]
  local o = OPTIONS[R_OPTS[r]]  -- (opts(r), without the call: once per run)
  local job = job_key(r)
  local existing_key = o and o.key and redis.call('HGET', B.task_keys, o.key)
  if resent ~= false and not B.fresh and redis.call('EXISTS', job) == 1 then
    -- this run was added already: the call is a resend after a lost reply
  elseif existing_key then
    out[#out + 1] = id
    out[#out + 1] = existing_key
    out[#out + 1] = false
  else
    if o then name = settle_name(B, o, id, name, out) end
    if name then
      local a = job_args[R_SHARED[r]]
      a[2], a[4] = R_DATA[r], R_SQ[r]
      redis.call('HSET', job, unpack(a))
      if R_EXTRA[r] then redis.call('HSET', job, unpack(R_EXTRA[r])) end
      if B.stops then redis.call('HSET', job, 'epoch', B.stops) end
      if name ~= R_NAME[r] then
        redis.call('HSET', job, 'sq', cmsgpack.pack(
          (function(m) m.name = name return m end)(cmsgpack.unpack(redis.call('HGET', job, 'sq')))))
      end
      local tn, ntn = B.task_names, B.ntask_names
      tn[ntn + 1] = id
      tn[ntn + 2] = name
      B.ntask_names = ntn + 2
      local number = run_number(id, B.sid)
      if number > (B.top or 0) then B.top = number end
      if o and o.key then redis.call('HSET', B.task_keys, o.key, id) end
      if state == 'queued' and B.status == 'Paused' then state = 'held' end
      local verdict, reason = 'ready', nil
      if o and o.deps and #o.deps > 0 then
        local states = {}
        for i, ref in ipairs(o.dep_keys) do states[i] = dep_state(ref) end
        verdict, reason = judge(o.run_if or 'succeeded', o.deps, states)
      end
      if o and o.cron then redis.call('HINCRBY', B.session, 'cron', 1) end
      if verdict == 'ready' and not (o and o.due) then
        if state == 'held' then hold(B, id)
        elseif state == 'queued' then
          local qi = R_QUEUE[r]
          local p = pushes[qi]
          local n = p.n + 1
          p[n] = id
          p.r[n] = r
          p.n = n
          if B.fresh and (n == 1 or R_SESSION[p.r[n - 1]] ~= R_SESSION[r]) then
            count_line(B, qi)
          end
        end
        if state ~= 'queued' then redis.call('HSET', job, 'state', state, 'status', RQ_STATUS[state]) end
        B.counts[state] = (B.counts[state] or 0) + 1  -- counted in the totals after the loop
        local qd = queued_data[state]
        if not qd then
          -- map({'name', P(name), 'state', P(state)}): all of it but the name made once
          qd = {head = '\130' .. PK.name, tail = PK.state .. P(state)}
          queued_data[state] = qd
        end
        if qd.name ~= name then  -- (runs alike, a map's, come together: made once for them)
          qd.name, qd.data = name, qd.head .. pstr(name) .. qd.tail
        end
        local data = qd.data
        emit(B, 'task.queued', id, data)
      else
        -- deferred first (counted), then judged like any waiting run
        redis.call('HSET', job, 'state', 'deferred', 'status', 'deferred')
        move(B, nil, 'deferred')
        local data = {'name', P(name), 'state', P('deferred')}
        if o.due then
          data[#data + 1] = 'due'
          data[#data + 1] = P(o.due / 1000.0)
        end
        emit(B, 'task.queued', id, map(data))
        if verdict == 'ready' then
          -- a scheduled run waits for a scheduler cycle, even when already due (cycle_sleep)
          redis.call('ZADD', SCHEDULE, o.due, id)
        elseif verdict == 'wait' then
          -- (a parent of another partition learns of it after this call: link.lua)
          for _, ref in ipairs(o.dep_keys) do
            if type(ref) == 'number' then add_child(KX(ref), id) end
          end
          redis.call('SADD', WAITING, id)
        else
          if o.cron then redis.call('HINCRBY', B.session, 'cron', -1) end
          local q = Q[R_QUEUE[r]]
          local RB = {job = job, S = B, session = B.session, held = B.held,
            queue = q.list, wake = q.wake, failed = q.failed}
          refuse(RB, id, 'deferred', verdict, reason, o.silent)
        end
      end
    end
  end
end
local gen  -- the data's generation, which a session's id counter starts in (reserve.lua)
-- (formatted once, not once a session; as an integer: tostring makes 1e15 '1e+15')
local retention = plan[6] and string.format('%d', plan[6])
local fields = {}  -- a new session's fields, `nf` long (one table for all of them)
for _, B in ipairs(S) do
  if B.ntask_names == 2 then  -- (a session of one run: most of a create's)
    redis.call('HSET', B.tasks, B.task_names[1], B.task_names[2])
  else
    chunked('HSET', B.tasks, B.task_names)
  end
  if B.given then chunked('HSET', B.names, B.given) end
  local nf = 0
  if B.fresh then
    B.seq_preset = queued_events(B)
    gen = gen or data_gen(false)
    -- (small numbers as strings, int(n) without the call: a number given to redis.call is
    -- formatted by sprintf)
    local seq, top = B.seq_preset, B.top or 0
    fields[1], fields[2], fields[3], fields[4] = 'status', 'Pending', 'seq', INTSTR[seq] or seq
    fields[5], fields[6], fields[7], fields[8] = 'next', INTSTR[top] or top, 'gen', gen
    nf = 8
    if retention then
      fields[9], fields[10] = 'retention_ms', retention
      nf = 10
    end
    if B.line_q then
      fields[nf + 1], fields[nf + 2] = line_of(B.line_q), int(B.line_n)
      nf = nf + 2
      if B.lines then
        for qi, n in pairs(B.lines) do
          fields[nf + 1], fields[nf + 2] = line_of(qi), int(n)
          nf = nf + 2
        end
      end
    end
  elseif B.top and B.top > num(redis.call('HGET', B.session, 'next')) then
    -- ids are reserved ahead (reserve.lua); a run written with a number past the counter
    -- (reserved before a failover lost the reservation) moves it on: a later reservation
    -- does not hand that id out again
    redis.call('HSET', B.session, 'next', B.top)
  end
  for state, n in pairs(B.counts) do
    stat(state, n)
    if B.fresh then
      fields[nf + 1], fields[nf + 2] = state, int(n)
      nf = nf + 2
    else
      redis.call('HINCRBY', B.session, state, int(n))
    end
  end
  if nf > 0 then
    redis.call('HSET', B.session, unpack(fields, 1, nf))
    forget_counts(B)
  end
end

-- The runs not handed join queue q's line (fair share, prelude `push_run`): a new session's
-- first run goes straight to the back of the line, the rest of a session's runs behind it.
for q, ids in ipairs(pushes) do
  local nids = ids.n
  if nids > 0 then
    local handed = hand(Q[q], queue_names[q], ids, function(k)
      local r = ids.r[k]
      return S[R_SESSION[r]], job_key(r)
    end)
    -- a new session's runs handed whole take no entry in the line (counted in its record)
    for k = 1, handed do
      local s_index = R_SESSION[ids.r[k]]
      if S[s_index].fresh and (k == nids or R_SESSION[ids.r[k + 1]] ~= s_index) then
        redis.call('HINCRBY', S[s_index].session, line_of(q), '-1')
      end
    end
    local i = handed + 1
    local line = {}
    local fresh = 0  -- runs of new sessions queued here (counted in the queue's depth at once)
    while i <= nids do
      local s_index = R_SESSION[ids.r[i]]
      local B = S[s_index]
      local j = i
      while j < nids and R_SESSION[ids.r[j + 1]] == s_index do j = j + 1 end
      if B.fresh then
        -- (its entry in the line counted in its record, above)
        fresh = fresh + j - i + 1
        line[#line + 1] = ids[i]
        if j > i then
          local squeue = key_session_queue(B.sid, queue_names[q])
          for c = i + 1, j, 1000 do
            redis.call('RPUSH', squeue, unpack(ids, c, math.min(c + 999, j)))
          end
        end
      else
        local RB = {S = B, session = B.session, queue = Q[q].list, wake = Q[q].wake,
          squeue = key_session_queue(B.sid, queue_names[q]), throttled = key_session_throttled(B.sid)}
        push_runs(RB, ids, i, j)
      end
      i = j + 1
    end
    if fresh > 0 then redis.call('HINCRBY', G.depths, Q[q].list, int(fresh)) end
    if #line > 0 then
      chunked('RPUSH', Q[q].list, line)
      wake_list(Q[q].wake)
    end
  end
end
for _, B in ipairs(S) do
  -- a run started above added events to its new session
  if B.fresh and queued_events(B) ~= B.seq_preset then
    B.seq_preset = queued_events(B)
    redis.call('HSET', B.session, 'seq', B.seq_preset)
  end
end
for q = 1, nq do redis.call('SADD', K.rq_queues, Q[q].list) end
flush()
return out
