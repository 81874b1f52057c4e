-- Accept an operation on a session (destroy, stop, ...): optionally set its status and emit
-- an event, and put the operation on the control queue, which workers serve first.
-- KEYS: [1] events channel (all), [2..8] status indexes, [9] run counters, [10] control
-- queue, [11] its wake list, [12] the operation's job key, [13] session, [14] history,
-- [15] session channel, [16] RQ's set of queues.
-- ARGV: now_ms, now_iso, cap, worker, sid, new status or '', event type or '', op id, op
--       name, then the op job's fields and values.
-- A stop starts a new stop epoch (the session's `stops`): its operation cancels only the runs
-- added before it (enqueue.lua marks runs added later with the epoch they were added in).
load_globals(2, 1)
local S = {sid = ARGV[5], session = KEYS[13], history = KEYS[14], chan = KEYS[15]}
if redis.call('EXISTS', S.session) == 0 then return 0 end
if ARGV[6] ~= '' then set_status(S, ARGV[6]) end
if ARGV[9] == 'stop' then redis.call('HINCRBY', S.session, 'stops', 1) end
if ARGV[7] ~= '' then emit(S, ARGV[7], nil, nil) end
flush()
redis.call('HSET', KEYS[12], unpack(ARGV, 10))
redis.call('RPUSH', KEYS[10], ARGV[8])
redis.call('SADD', KEYS[16], KEYS[10])
redis.call('LPUSH', KEYS[11], '1')
redis.call('LTRIM', KEYS[11], 0, 0)
return 1
