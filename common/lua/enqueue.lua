-- Create sessions and add runs to them, in one atomic step (SPEC §2: nothing is lost, and
-- info() sees them at once). KEYS: [1] events channel (all), [2] the session index hash,
-- [3] RQ's set of queues, [4..10] status index sets, [11] run counters; then 7 keys per session (session, history,
-- channel, tasks, held, kind index, owner index); then 2 per queue (list, wake); then one job
-- key per run. ARGV: now_ms, now_iso, cap, worker, plan (msgpack):
--   plan = [sessions, nqueues, runs]
--   session = [sid, is_new, record bytes, name]
--   run = [session index, run id, name, state, queue index, field, value, field, value, ...]
load_globals(4, 1)
local plan = cmsgpack.unpack(ARGV[5])
local sessions, nq, runs = plan[1], plan[2], plan[3]
local ns = #sessions
local S = {}
for i, s in ipairs(sessions) do
  local k = 11 + (i - 1) * 7 + 1
  S[i] = {sid = s[1], session = KEYS[k], history = KEYS[k + 1], chan = KEYS[k + 2],
    tasks = KEYS[k + 3], held = KEYS[k + 4], kind = KEYS[k + 5], owner = KEYS[k + 6]}
  if not s[2] and redis.call('EXISTS', S[i].session) == 0 then return {'gone', s[1]} end
end
for i, s in ipairs(sessions) do
  local B = S[i]
  if s[2] then
    redis.call('HSET', KEYS[2], B.sid, s[3])
    redis.call('HSET', B.session, 'seq', 0)
    set_status(B, 'Pending')
    redis.call('SADD', B.kind, B.sid)
    redis.call('SADD', B.owner, B.sid)
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
local qoff = 11 + ns * 7
local roff = qoff + nq * 2
local pushes = {}
for r, run in ipairs(runs) do
  local B, id, state, q = S[run[1]], run[2], run[4], run[5]
  redis.call('HSET', KEYS[roff + r], unpack(run, 6))
  redis.call('HSET', B.tasks, id, run[3])
  move(B, nil, state)
  if state == 'queued' then
    pushes[q] = pushes[q] or {}
    table.insert(pushes[q], id)
  elseif state == 'held' then
    redis.call('RPUSH', B.held, id)
  end
  emit(B, 'task.queued', id, map({'name', P(run[3]), 'state', P(state)}))
end
for q, ids in pairs(pushes) do
  local qkey, wkey = KEYS[qoff + (q - 1) * 2 + 1], KEYS[qoff + (q - 1) * 2 + 2]
  for c = 1, #ids, 1000 do
    redis.call('RPUSH', qkey, unpack(ids, c, math.min(c + 999, #ids)))
  end
  redis.call('SADD', KEYS[3], qkey)
  redis.call('LPUSH', wkey, '1')
  redis.call('LTRIM', wkey, 0, 0)
end
return {'ok'}
