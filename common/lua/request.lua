-- Accept an operation on a session (destroy, stop, ...): optionally set its status and emit
-- an event, and put the operation on the control queue, which workers serve first.
-- Its contract (common/scripts/events.py REQUEST): the control queue and its wake list, the
-- operation's job key, the session's keys, RQ's set of queues; `sid`, `status` (new status
-- or ''), `event` (type or ''), `op_id`, `op`, then a `field` argument block (name, value)
-- per field of the operation's job hash.
-- A stop starts a new stop epoch (the session's `stops`): its operation cancels only the runs
-- added before it (enqueue.lua marks runs added later with the epoch they were added in).
-- Returns 1 (accepted), 0 (no such session) or 2: a stop of a session that has ended
-- (Completed, Failed, Stopped), accepted with nothing to do - nothing waits or runs, and its
-- status stays what it ended as.
load_globals()
local S = {sid = A.sid, session = K.session, history = K.history, chan = K.chan}
S.status = redis.call('HGET', S.session, 'status')
if not S.status then return 0 end
if A.op == 'stop' and ENDED[S.status] then return 2 end
if A.status ~= '' then set_status(S, A.status) end
if A.op == 'stop' then redis.call('HINCRBY', S.session, 'stops', 1) end
if A.event ~= '' then emit(S, A.event, nil, nil) end
flush()
local fields = {}
for i = 1, A.nfields do
  local f = AB.field(i)
  fields[#fields + 1] = f.name
  fields[#fields + 1] = f.value
end
redis.call('HSET', K.op_job, unpack(fields))
redis.call('RPUSH', K.control_queue, A.op_id)
redis.call('SADD', K.rq_queues, K.control_queue)
wake_list(K.control_wake)
return 1
