-- Emit events of one session (the standalone form of prelude's `emit`). Does nothing for a
-- session that no longer exists. Its contract: common/scripts/events.py EMIT (an `event`
-- argument block - type, task or '', data - per event).
G.chan_all = K.chan_all
set_clock(A.now_ms, '', A.cap, A.worker)
local S = {sid = A.sid, session = K.session, history = K.history, chan = K.chan}
if redis.call('EXISTS', S.session) == 0 then return 0 end
for i = 1, A.nevents do
  local e = AB.event(i)
  local task = e.task
  if task == '' then task = nil end
  emit(S, e.type, task, e.data)
end
flush()
return 1
