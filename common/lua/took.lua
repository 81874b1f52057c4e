-- A worker says it took the run an enqueue handed it while it waited (prelude `hand`):
-- the run's start shows now (prelude `took`), and it is no longer the worker's handed run, so
-- that were the worker lost from here on, the run used up an attempt (recover.lua). Sent
-- without waiting for the reply, ahead of the run's finish on the same connection. Does
-- nothing for a run that is not the worker's handed run any more (recovered meanwhile).
-- Its contract: common/scripts/contracts.py TOOK.
load_globals()
if redis.call('GET', K.handed) ~= A.id then return 0 end
redis.call('DEL', K.handed)
local j = redis.call('HMGET', key_job(A.id), 'state', 'worker_name')
if j[1] ~= 'started' or j[2] ~= G.worker then return 0 end
took({sid = A.sid, session = K.session, history = K.history, chan = K.chan}, A.id, A.attempt)
flush()
return 1
