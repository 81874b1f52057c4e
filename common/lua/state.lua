-- Change one key of a session's shared state and emit state.changed, atomically (SPEC §3).
-- KEYS: [1] events channel (all), [2] session, [3] history, [4] session channel, [5] state
-- hash. ARGV: now_ms, cap, worker, sid, task ('' for the producer), key, 'set' or 'del',
-- value (msgpack). Returns 0 when the session does not exist, else 1.
G.chan_all = KEYS[1]
set_clock(ARGV[1], '', ARGV[2], ARGV[3])
local S = {sid = ARGV[4], session = KEYS[2], history = KEYS[3], chan = KEYS[4]}
if redis.call('EXISTS', S.session) == 0 then return 0 end
local task, key, op, value = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if task == '' then task = nil end
if op == 'del' then
  if redis.call('HDEL', KEYS[5], key) == 0 then return 1 end
  emit(S, 'state.changed', task, map({'key', P(key), 'value', NIL, 'deleted', P(true)}))
else
  redis.call('HSET', KEYS[5], key, value)
  emit(S, 'state.changed', task, map({'key', P(key), 'value', value}))
end
flush()
return 1
