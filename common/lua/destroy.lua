-- Carry out a destroy (SPEC §2): cancel the session's waiting runs; if none is running, delete
-- the session and everything it owns and emit session.destroyed; else report the running ones
-- (the caller stops them, and calls this again when they have ended).
-- Its contract (common/scripts/contracts.py DESTROY): the session index, the persistent
-- names, the session's keys, its kind and owner index sets, the schedule zset, the set of
-- runs waiting on dependencies and the session's throttled set; a `run` key block (job,
-- started, finished, failed, queue, squeue) and a `run` argument block (its id) per run;
-- `sid`, `names_field` ('' if none), `history_ttl` (0: the history goes now too); `ended_only` (retention and prune: remove the session only
-- if it has ended, nothing of it is live and the runs given are all of it - else {'live'},
-- {'busy'} (a stop still under way: due again a little later) or {'changed'}, nothing done).
load_globals()
local S = {sid = A.sid, session = K.session, history = K.history, chan = K.chan}
local status = redis.call('HGET', S.session, 'status')
if not status then
  redis.call('ZREM', G.retention, A.sid)
  return {'gone'}
end
if A.ended_only == 1 then
  if not ENDED[status] then
    redis.call('ZREM', G.retention, A.sid)
    return {'live'}
  end
  local c = redis.call('HMGET', S.session, 'queued', 'deferred', 'held', 'started')
  if num(c[1]) + num(c[2]) + num(c[3]) + num(c[4]) > 0 then
    redis.call('ZADD', G.retention, 'XX', G.now_ms + 5000, A.sid)
    return {'busy'}
  end
  if redis.call('HLEN', K.tasks) ~= A.nruns then return {'changed'} end
end
S.status = status
set_status(S, 'Terminating')
local nruns = A.nruns
local waiting = {'waiting'}
for r = 1, nruns do
  local id, job = AB.run(r).id, KB.run(r).job
  local j = redis.call('HMGET', job, 'state', 'worker_name')
  if j[1] == 'queued' or j[1] == 'deferred' or j[1] == 'held' then
    S.job = job
    cancel_run(S, id, j[1], 'session destroyed')
    if j[1] == 'deferred' then
      -- nothing of it is left for the scheduler (a schedule may be months away)
      redis.call('ZREM', K.schedule, id)
      redis.call('SREM', K.waiting, id)
    end
  elseif j[1] == 'started' then
    waiting[#waiting + 1] = id
    waiting[#waiting + 1] = j[2] or ''
  end
end
if #waiting > 1 then
  flush()
  return waiting
end
emit(S, 'session.destroyed', nil, nil)
flush()
-- The session leaves every queue its runs wait on (fair share, prelude push_run): its own
-- list for the queue, and its entries in the queue's line (RQ's queue list: workers would
-- pop ids of runs that are gone); the queue's depth counted them all.
local function leave_line(k)
  local gone = redis.call('LLEN', k.squeue)
  redis.call('DEL', k.squeue)
  if num(redis.call('HGET', S.session, line_field(k))) > 0 then
    for _, id in ipairs(redis.call('LRANGE', k.queue, 0, -1)) do
      if session_of(id) == S.sid then gone = gone + redis.call('LREM', k.queue, 1, id) end
    end
  end
  if gone > 0 then redis.call('HINCRBY', G.depths, k.queue, -gone) end
end
local left = {}
for r = 1, nruns do
  local k, id = KB.run(r), AB.run(r).id
  if not left[k.queue] then
    left[k.queue] = true
    leave_line(k)
  end
  redis.call('DEL', k.job)
  redis.call('ZREM', k.finished, id)
  redis.call('ZREM', k.failed, id)
end
-- the runs leave the global counters with the session (live ones too: a run whose RQ job was
-- deleted behind our back is still counted by its session)
for _, state in ipairs({'queued', 'deferred', 'held', 'started', 'succeeded', 'failed',
    'canceled'}) do
  local n = num(redis.call('HGET', S.session, state))
  if n > 0 then redis.call('HINCRBY', G.stats_key, state, -n) end
end
redis.call('DEL', K.tasks, K.task_names, K.task_keys, K.held, K.running, K.objects, K.state,
  K.logs, K.throttled, K.session)
redis.call('HDEL', K.sessions, S.sid)
if A.names_field ~= '' then redis.call('HDEL', K.names, A.names_field) end
redis.call('SREM', idx('Terminating'), S.sid)
redis.call('SREM', K.kind_index, S.sid)
redis.call('SREM', K.owner_index, S.sid)
redis.call('ZREM', G.retention, S.sid)
if A.history_ttl > 0 then
  redis.call('EXPIRE', S.history, A.history_ttl)
else
  redis.call('DEL', S.history)
end
return {'destroyed'}
