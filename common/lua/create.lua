-- Create one session of one run, queued (SPEC §2: create() of one replica, the commonest
-- call, one at a time): what enqueue.lua writes for such a call, with none of its general
-- path (plans, options, names, claims, dependencies, many sessions and queues), so that
-- Redis spends on it little more than the writes themselves. tests/common/test_create_one.py
-- holds the two to the same writes, an idle worker's hand-off included.
-- Its contract (common/scripts/contracts.py CREATE): the session index hash, RQ's set of
-- queues, the idle workers set, the live workers zset, the data epoch; the session's keys;
-- its queue's; the run's job hash. `name`: the session's, and its run's; `queue`: the run's
-- queue name; `record`: the session's record (msgpack); `job`: the job hash's fields
-- (msgpack: field, value, ...); `retention`: ms the session is kept after it ends ('': until
-- destroyed). Returns {'ok'} (a resend after a lost reply included: the
-- session exists already, and nothing is written again).
load_globals()
local sid, id, name = A.sid, A.id, A.name
local B = {sid = sid, session = K.session, history = K.history, chan = K.chan,
  running = K.running, held = K.held, status = 'Pending', fresh = true}
if redis.call('EXISTS', B.session) == 1 then return {'ok'} end
redis.call('HSET', K.sessions, sid, A.record)
redis.call('SADD', idx('Pending'), sid)
redis.call('SADD', K.kind, sid)
redis.call('SADD', K.owner, sid)
emit(B, 'session.created', nil, '\129' .. PK.name .. pstr(name))  -- map({'name', P(name)})
redis.call('HSET', K.job, unpack(cmsgpack.unpack(A.job)))
emit(B, 'task.queued', id, '\130' .. PK.name .. pstr(name) .. PK.state .. P('queued'))
redis.call('HSET', K.tasks, id, name)

local q = {list = K.list, wake = K.wake, failed = K.failed, started = K.started,
  idle_line = K.idle_line}
local line = line_field({queue = q.list})
-- the record's counts, as if the run waits in the line: a hand-off below moves them
B.seq_preset = 2
local top = run_number(id, sid)
local fields = {'status', 'Pending', 'seq', '2', 'next', INTSTR[top] or top, 'gen',
  data_gen(false)}
if A.retention ~= '' then
  fields[#fields + 1] = 'retention_ms'
  fields[#fields + 1] = A.retention
end
fields[#fields + 1] = line
fields[#fields + 1] = '1'
fields[#fields + 1] = 'queued'
fields[#fields + 1] = '1'
stat('queued', 1)
redis.call('HSET', B.session, unpack(fields))
forget_counts(B)

local ids = {id}
-- (a run handed shows its start when its worker takes it: no event here, `start`)
if hand(q, A.queue, ids, function() return B, K.job end) == 1 then
  redis.call('HINCRBY', B.session, line, '-1')
else
  redis.call('HINCRBY', G.depths, q.list, '1')
  redis.call('RPUSH', q.list, id)
  wake_list(q.wake)
end
redis.call('SADD', K.rq_queues, q.list)
flush()
return {'ok'}
