-- Create sessions and add runs to them, in one atomic step (SPEC §2: nothing is lost, and
-- info() sees them at once). KEYS: [1] events channel (all), [2] the session index hash,
-- [3] RQ's set of queues, [4..10] status index sets, [11] run counters; then 7 keys per
-- session (session, history, channel, tasks, held, kind index, owner index); then 2 per queue
-- (list, wake); then one job key per run. ARGV: now_ms, now_iso, cap, worker, plan (msgpack):
--   plan = [sessions, nqueues, runs]
--   session = [sid, is_new, record bytes, name]
--   run = [session index, run id, name, state, queue index, field, value, field, value, ...]
-- Counters, index entries and events are gathered and written a few commands at a time.
load_globals(4, 1)
local plan = cmsgpack.unpack(ARGV[5])
local sessions, nq, runs = plan[1], plan[2], plan[3]
local CHUNK = 1000

-- call `cmd key` with the values of `list`, at most CHUNK at a time
local function chunked(cmd, key, list)
  for c = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, c, math.min(c + CHUNK - 1, #list)))
  end
end

local function add_to(groups, key, ...)
  local g = groups[key]
  if not g then
    g = {}
    groups[key] = g
  end
  for _, v in ipairs({...}) do g[#g + 1] = v end
end

local S = {}
for i, s in ipairs(sessions) do
  local k = 11 + (i - 1) * 7 + 1
  S[i] = {sid = s[1], session = KEYS[k], history = KEYS[k + 1], chan = KEYS[k + 2],
    tasks = KEYS[k + 3], held = KEYS[k + 4], kind = KEYS[k + 5], owner = KEYS[k + 6],
    counts = {}}
  if not s[2] and redis.call('EXISTS', S[i].session) == 0 then return {'gone', s[1]} end
  -- a new session that exists already: this very call was carried out before and its
  -- reply lost (the client sent it again); the script is atomic, so all of it was
  if s[2] and redis.call('EXISTS', S[i].session) == 1 then return {'ok'} end
end
local sets, index = {}, {}
for i, s in ipairs(sessions) do
  local B = S[i]
  if s[2] then
    index[#index + 1] = B.sid
    index[#index + 1] = s[3]
    B.status = 'Pending'
    B.fresh = true
    add_to(sets, G.idx['Pending'], B.sid)
    add_to(sets, B.kind, B.sid)
    add_to(sets, B.owner, B.sid)
    emit(B, 'session.created', nil, map({'name', P(s[4])}))
  else
    local status = redis.call('HGET', B.session, 'status')
    if status == 'Completed' or status == 'Failed' or status == 'Stopped' then
      set_status(B, 'Running')  -- adding work to an ended session runs it again
      redis.call('HDEL', B.session, 'finished_at')
      emit(B, 'session.resumed', nil, nil)
    end
  end
end
chunked('HSET', KEYS[2], index)
for key, members in pairs(sets) do chunked('SADD', key, members) end

local qoff = 11 + #sessions * 7
local roff = qoff + nq * 2
local pushes, tasks = {}, {}
for r, run in ipairs(runs) do
  local B, id, state = S[run[1]], run[2], run[4]
  redis.call('HSET', KEYS[roff + r], unpack(run, 6))
  add_to(tasks, B.tasks, id, run[3])
  B.counts[state] = (B.counts[state] or 0) + 1
  stat(state, 1)
  if state == 'queued' then
    add_to(pushes, run[5], id)
  elseif state == 'held' then
    redis.call('RPUSH', B.held, id)
  end
  emit(B, 'task.queued', id, map({'name', P(run[3]), 'state', P(state)}))
end
for key, fields in pairs(tasks) do chunked('HSET', key, fields) end
for _, B in ipairs(S) do
  local fields = {}
  if B.fresh then
    fields = {'status', 'Pending', 'seq', 0}
  end
  for state, n in pairs(B.counts) do
    if B.fresh then
      fields[#fields + 1] = state
      fields[#fields + 1] = n
    else
      redis.call('HINCRBY', B.session, state, n)
    end
  end
  if #fields > 0 then redis.call('HSET', B.session, unpack(fields)) end
end
for q, ids in pairs(pushes) do
  local qkey, wkey = KEYS[qoff + (q - 1) * 2 + 1], KEYS[qoff + (q - 1) * 2 + 2]
  chunked('RPUSH', qkey, ids)
  redis.call('SADD', KEYS[3], qkey)
  redis.call('LPUSH', wkey, '1')
  redis.call('LTRIM', wkey, 0, 0)
end
flush()
return {'ok'}
