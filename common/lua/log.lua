-- Append a run's output lines to the session's logs and emit one task.log event per line.
-- KEYS: [1] events channel (all), [2] session, [3] history, [4] session channel, [5] logs.
-- ARGV: now_ms, cap, worker, sid, task, logs cap, then (stream, line) pairs.
G.chan_all = KEYS[1]
set_clock(ARGV[1], '', ARGV[2], ARGV[3])
local S = {sid = ARGV[4], session = KEYS[2], history = KEYS[3], chan = KEYS[4]}
if redis.call('EXISTS', S.session) == 0 then return 0 end
local task = ARGV[5]
local entries = {}
for i = 7, #ARGV, 2 do
  local stream, line = P(ARGV[i]), P(ARGV[i + 1])
  entries[#entries + 1] = map({'v', P(1), 'ts', G.ts_packed, 'task', P(task), 'stream', stream,
    'line', line})
  emit(S, 'task.log', task, map({'stream', stream, 'line', line}))
end
for c = 1, #entries, 1000 do
  redis.call('RPUSH', KEYS[5], unpack(entries, c, math.min(c + 999, #entries)))
end
redis.call('LTRIM', KEYS[5], -tonumber(ARGV[6]), -1)
flush()
return 1
