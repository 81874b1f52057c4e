-- Append a run's output lines to the session's logs and emit one task.log event per line.
-- Its contract: common/scripts/events.py LOG (a `line` argument block - stream, text - per
-- line; `logs_cap` lines kept).
G.chan_all = K.chan_all
set_clock(A.now_ms, '', A.cap, A.worker)
local S = {sid = A.sid, session = K.session, history = K.history, chan = K.chan}
if redis.call('EXISTS', S.session) == 0 then return 0 end
local task = A.task
local entries = {}
for i = 1, A.nlines do
  local l = AB.line(i)
  local stream, line = P(l.stream), P(l.text)
  entries[#entries + 1] = map({'v', P(1), 'ts', G.ts_packed, 'task', P(task), 'stream', stream,
    'line', line})
  emit(S, 'task.log', task, map({'stream', stream, 'line', line}))
end
for c = 1, #entries, 1000 do
  redis.call('RPUSH', K.logs, unpack(entries, c, math.min(c + 999, #entries)))
end
redis.call('LTRIM', K.logs, -A.logs_cap, -1)
flush()
return 1
