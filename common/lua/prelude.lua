-- Shared by every sessionq script (common/scripts.py prepends it). Keys arrive through KEYS
-- only; a script never assembles a key name. Events are built here, in the wire layout of
-- SPEC §5, so that every event - from Python or from a script - comes out of `emit`.
local P = cmsgpack.pack
local NIL = '\192'
local EMPTY_MAP = '\128'
local G = {}  -- per-call globals: ts, now_ms, now_iso, cap, worker, chan_all, idx[status]

local STATUSES = {'Pending', 'Running', 'Paused', 'Terminating', 'Stopped', 'Completed', 'Failed'}

local function enc(v)
  if v == nil or v == false then return NIL end
  return P(v)
end

-- A msgpack map from ordered (key, already-encoded value) pairs.
local function map(pairs)
  local n = #pairs / 2
  local out
  if n < 16 then out = {string.char(0x80 + n)} else out = {'\222' .. struct.pack('>H', n)} end
  for i = 1, #pairs, 2 do
    out[#out + 1] = P(pairs[i])
    out[#out + 1] = pairs[i + 1]
  end
  return table.concat(out)
end

-- G.idx[status] = key of the status index set; KEYS[first .. first+6] in STATUSES order,
-- then KEYS[first+7] the global counters of runs by state.
local function load_globals(first_idx_key, argv_first)
  G.chan_all = KEYS[1]
  G.idx = {}
  for i, name in ipairs(STATUSES) do G.idx[name] = KEYS[first_idx_key + i - 1] end
  G.stats = KEYS[first_idx_key + 7]
  G.now_ms = tonumber(ARGV[argv_first])
  G.ts = G.now_ms / 1000.0
  G.now_iso = ARGV[argv_first + 1]
  G.cap = tonumber(ARGV[argv_first + 2])
  G.worker = ARGV[argv_first + 3]
  if G.worker == '' then G.worker = nil end
end

-- S = {sid, session, history, chan}
local function emit(S, etype, task, data)
  local seq = redis.call('HINCRBY', S.session, 'seq', 1)
  local ev = map({'v', P(1), 'seq', P(seq), 'ts', P(G.ts), 'type', P(etype),
    'session', P(S.sid), 'task', enc(task), 'worker', enc(G.worker), 'data', data or EMPTY_MAP})
  redis.call('ZADD', S.history, seq, ev)
  if seq > G.cap then redis.call('ZREMRANGEBYSCORE', S.history, '-inf', seq - G.cap) end
  redis.call('PUBLISH', S.chan, ev)
  redis.call('PUBLISH', G.chan_all, ev)
  return seq
end

local function set_status(S, new)
  local old = redis.call('HGET', S.session, 'status')
  if old == new then return old end
  redis.call('HSET', S.session, 'status', new)
  if old then redis.call('SREM', G.idx[old], S.sid) end
  redis.call('SADD', G.idx[new], S.sid)
  return old
end

local function move(S, from, to, n)
  n = n or 1
  if from then
    redis.call('HINCRBY', S.session, from, -n)
    redis.call('HINCRBY', G.stats, from, -n)
  end
  if to then
    redis.call('HINCRBY', S.session, to, n)
    redis.call('HINCRBY', G.stats, to, n)
  end
end

local function num(v) return tonumber(v or '0') or 0 end

-- A Running/Pending session with nothing queued, deferred, held or started has ended.
local function maybe_end(S)
  local v = redis.call('HMGET', S.session, 'status', 'queued', 'deferred', 'held', 'started',
    'failed', 'cron')
  if v[1] ~= 'Running' and v[1] ~= 'Pending' then return nil end
  if num(v[2]) + num(v[3]) + num(v[4]) + num(v[5]) + num(v[7]) > 0 then return nil end
  local final = 'Completed'
  if num(v[6]) > 0 then final = 'Failed' end
  set_status(S, final)
  redis.call('HSET', S.session, 'finished_at', G.now_ms)
  local etype = 'session.completed'
  if final == 'Failed' then etype = 'session.failed' end
  emit(S, etype, nil, map({'status', P(final)}))
  return final
end

-- A run block: 11 keys starting at KEYS[i] (see common/scripts.py RUN_BLOCK).
local function run_block(i, sid)
  return {job = KEYS[i], session = KEYS[i + 1], history = KEYS[i + 2], chan = KEYS[i + 3],
    running = KEYS[i + 4], held = KEYS[i + 5], wip = KEYS[i + 6], finished = KEYS[i + 7],
    failed = KEYS[i + 8], queue = KEYS[i + 9], wake = KEYS[i + 10], sid = sid}
end

local function wake(B)
  redis.call('LPUSH', B.wake, '1')
  redis.call('LTRIM', B.wake, 0, 0)
end

local function cancel_run(B, id, state, reason)
  redis.call('HSET', B.job, 'state', 'canceled', 'status', 'canceled', 'ended_at', G.now_iso)
  move(B, state, 'canceled')
  emit(B, 'task.canceled', id, map({'reason', P(reason)}))
end

-- The run failed or was lost: retry it while retries are left, else record the failure.
local function fail_or_retry(B, id, error_enc, attempts, retries_left, retry_allowed, rqworker)
  if retry_allowed and retries_left > 0 then
    redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued', 'error', error_enc,
      'retries_left', retries_left - 1)
    redis.call('HINCRBY', B.job, 'number_of_retries', 1)
    redis.call('RPUSH', B.queue, id)
    wake(B)
    move(B, 'started', 'queued')
    emit(B, 'task.retrying', id, map({'error', error_enc, 'attempt', P(attempts),
      'retries_left', P(retries_left - 1)}))
    return 'retrying'
  end
  redis.call('HSET', B.job, 'state', 'failed', 'status', 'failed', 'ended_at', G.now_iso,
    'error', error_enc)
  redis.call('ZADD', B.failed, '+inf', id)
  move(B, 'started', 'failed')
  emit(B, 'task.failed', id, map({'error', error_enc, 'attempt', P(attempts)}))
  if rqworker then redis.call('HINCRBY', rqworker, 'failed_job_count', 1) end
  return 'failed'
end
