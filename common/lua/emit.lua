-- Emit events of one session (the standalone form of prelude's `emit`). Does nothing for a
-- session that no longer exists. KEYS: [1] events channel (all), [2] session, [3] history,
-- [4] session channel. ARGV: now_ms, cap, worker, sid, then (type, task, data) triples.
G.chan_all = KEYS[1]
set_clock(ARGV[1], '', ARGV[2], ARGV[3])
local S = {sid = ARGV[4], session = KEYS[2], history = KEYS[3], chan = KEYS[4]}
if redis.call('EXISTS', S.session) == 0 then return 0 end
for i = 5, #ARGV, 3 do
  local task = ARGV[i + 1]
  if task == '' then task = nil end
  emit(S, ARGV[i], task, ARGV[i + 2])
end
flush()
return 1
