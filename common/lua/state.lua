-- Change one key of a session's shared state and emit state.changed, atomically (SPEC §3).
-- Its contract: common/scripts/events.py STATE (`task` '' for the producer, `op` 'set' or
-- 'del', `value` msgpack). Returns 0 when the session does not exist, else 1.
G.chan_all = K.chan_all
set_clock(A.now_ms, '', A.cap, A.worker)
local S = {sid = A.sid, session = K.session, history = K.history, chan = K.chan}
if redis.call('EXISTS', S.session) == 0 then return 0 end
local task, key, op, value = A.task, A.key, A.op, A.value
if task == '' then task = nil end
if op == 'del' then
  if redis.call('HDEL', K.state, key) == 0 then return 1 end
  emit(S, 'state.changed', task, map({'key', P(key), 'value', NIL, 'deleted', P(true)}))
else
  redis.call('HSET', K.state, key, value)
  emit(S, 'state.changed', task, map({'key', P(key), 'value', value}))
end
flush()
return 1
