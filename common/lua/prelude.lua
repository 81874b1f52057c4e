-- Shared by every sessionq script: common/scripts puts it after the script's generated
-- contract prologue (K, A, KB, AB, the key builders, STATUS: contract.py) and before its
-- body. Keys arrive through KEYS, by name; those of runs a script finds itself (run.lua's
-- claims) come from the generated key builders, made from keys.py's own names: a script
-- never invents a key name. Events are built here, in the wire layout of SPEC §5, so that
-- every event - from Python or from a script - comes out of `emit`.
-- Events are buffered per session and written by `flush` at the end of the script: one
-- HINCRBY numbers them all, one ZADD keeps them, then each is published.
local P = cmsgpack.pack
local NIL = '\192'
local EMPTY_MAP = '\128'
-- (every field a call may set is named, nil until set: the table is made at its full size,
-- not grown - rehashed - twice by each call's first writes)
local G = {touched = {}, stats = {}, ending = {}, deferred = {}, reindexed = {}, live = nil,
  sessions = nil, now_ms = nil, ts = nil, ts_packed = nil, now_iso = nil, cap = nil,
  worker = nil, worker_packed = nil, chan_all = nil, stats_key = nil, depths = nil,
  retention = nil, defer = nil, patterns = nil, gather = nil}
-- the packed keys of an event map (fixmap of 8, in SPEC §5's order)
local EV_HEAD = '\136\161v\1\163seq'
local EV_TS, EV_TYPE, EV_SESSION = '\162ts', '\164type', '\167session'
local EV_TASK, EV_WORKER, EV_DATA = '\164task', '\166worker', '\164data'
local TRIM_EVERY = 64
-- Events a channel gets from one call before asking whether anyone listens (see `heard`)
local ASK_FROM = 8

-- A string packed as P packs it; one under 32 bytes (a session or task id, a name: one in
-- every event) made here, its length in its first byte (msgpack's fixstr), not in cmsgpack's
-- own buffer
local FIXSTR = {[0] = '\160', '\161', '\162', '\163', '\164', '\165', '\166', '\167',
  '\168', '\169', '\170', '\171', '\172', '\173', '\174', '\175',
  '\176', '\177', '\178', '\179', '\180', '\181', '\182', '\183',
  '\184', '\185', '\186', '\187', '\188', '\189', '\190', '\191'}
local function pstr(s)
  local head = FIXSTR[#s]
  if head then return head .. s end
  return P(s)
end

local function enc(v)
  if v == nil or v == false then return NIL end
  return P(v)
end

-- Packed strings by value, each packed once per script call: the keys of event data and the
-- event types come back for every run of a batch.
-- (the metatable made once: a table made per call costs more than a lookup)
local PK_MT = {__index = function(t, k)
  local v = P(k)
  t[k] = v
  return v
end}
local PK = setmetatable({}, PK_MT)

-- A msgpack map from ordered (key, already-encoded value) pairs.
local function map(pairs)
  local n = #pairs / 2
  if n == 1 then return '\129' .. PK[pairs[1]] .. pairs[2] end
  if n == 2 then return '\130' .. PK[pairs[1]] .. pairs[2] .. PK[pairs[3]] .. pairs[4] end
  local out
  if n < 16 then out = {string.char(0x80 + n)} else out = {'\222' .. struct.pack('>H', n)} end
  for i = 1, #pairs, 2 do
    out[#out + 1] = PK[pairs[i]]
    out[#out + 1] = pairs[i + 1]
  end
  return table.concat(out)
end

local function num(v) return tonumber(v or '0') or 0 end
-- Small integers as strings, made once: a number given to redis.call is formatted by Redis
-- with sprintf (~2,000 instructions); the counts a call moves are mostly a few either way.
local INTSTR = {'1', '2', '3', '4', '5', '6', '7', '8', [0] = '0', [-1] = '-1', [-2] = '-2',
  [-3] = '-3', [-4] = '-4', [-5] = '-5', [-6] = '-6', [-7] = '-7', [-8] = '-8'}
local function int(n) return INTSTR[n] or n end
-- Numbers as strings, each made once per call: a number joined to a string (`..`) is
-- formatted by sprintf every time.
local NUMSTR_MT = {__index = function(t, n)
  local v = tostring(n)
  t[n] = v
  return v
end}
local NUMSTR = setmetatable({}, NUMSTR_MT)
-- Redis's own clock, epoch ms: what heartbeats are stamped and judged with, whatever the
-- clocks of the processes that send them (and however late their calls arrive)
local function redis_now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- What INFO says of `field` in `section`; nil where the ACL does not allow INFO.
local function info_field(section, field)
  local r = redis.pcall('INFO', section)
  if type(r) ~= 'string' then return nil end
  return string.match(r, field .. ':(%w+)')
end

-- The generation of the data this server holds (K.epoch), so that task ids are never handed
-- out twice: a new one, Redis's clock in µs, whenever the process serving the data or its
-- replication history is not the one that last wrote here - a restart (INFO's run_id) or a
-- promotion (master_replid) may have lost writes, such as a reservation of ids. (The replid
-- also changes with no write lost - a first replica attaching, the backlog freed after
-- repl-backlog-ttl: ids then jump for nothing, harmlessly.) `check`: ask the server (two INFO
-- sections, ~3 µs); else trust the last generation written (a create). Where the ACL does not
-- allow INFO the generation stays the first one: no check (SESSIONQ_WAIT_REPLICAS then).
local function data_gen(check)
  local g = redis.call('HMGET', K.epoch, 'server', 'gen')
  if g[2] and not check then return g[2] end
  local run = info_field('server', 'run_id')  -- (denied: asked no further, one ACL LOG line)
  local replid = run and info_field('replication', 'master_replid')
  local server = replid and (run:sub(1, 12) .. replid:sub(1, 12)) or ''
  if g[2] and (server == '' or server == g[1]) then return g[2] end
  local t = redis.call('TIME')
  local gen = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', K.epoch, 'server', server, 'gen', gen)
  return gen
end

-- A write of one member to a set or registry (`cmd key a [b]`): at once, or - while a step
-- gathers them (G.gather, run.lua) - queued, to be sent by `write_gathered` as one command per
-- command and key for all the runs of the step (in the order first used).
local function gathered(cmd, key, a, b)
  local gather = G.gather
  if not gather then
    if b then redis.call(cmd, key, a, b) else redis.call(cmd, key, a) end
    return
  end
  local lk = cmd .. ' ' .. key
  local args = gather[lk]
  if not args then
    args = {}
    gather[lk] = args
    gather[#gather + 1] = {cmd, key, args}
  end
  args[#args + 1] = a
  if b then args[#args + 1] = b end
end

-- Send the writes gathered so far (see `gathered`); gathering goes on.
local function write_gathered()
  local gather = G.gather
  if not gather then return end
  for _, w in ipairs(gather) do
    local args = w[3]
    for c = 1, #args, 1000 do
      redis.call(w[1], w[2], unpack(args, c, math.min(c + 999, #args)))
    end
  end
  G.gather = {}
end

-- The session table behind a run block (see run_block), or the session table itself.
local function sess(B) return B.S or B end

-- Session S's table `field` for the script's flush, made on first use, S then listed once in
-- G[list] (the sessions the flush goes over: events, deferred count changes).
local function own(S, field, list)
  local t = S[field]
  if not t then
    t = {}
    S[field] = t
    G[list][#G[list] + 1] = S
  end
  return t
end

local function set_clock(now_ms, now_iso, cap, worker)
  G.now_ms = tonumber(now_ms)
  G.ts = G.now_ms / 1000.0
  G.ts_packed = P(G.ts)
  G.now_iso = now_iso
  G.cap = tonumber(cap)
  G.worker = worker
  if G.worker == '' then G.worker = nil end
  G.worker_packed = enc(G.worker)
end

-- The keys and arguments every state-changing script has (contract.py GLOBAL_KEYS and
-- CLOCK_ARGS): the all-sessions channel, a status index set per STATUS (`idx`), the global
-- run counters; now_ms, now_iso, cap, worker.
local function load_globals()
  G.chan_all = K.chan_all
  G.stats_key = K.counters
  G.depths = K.depths
  G.retention = K.retention
  set_clock(A.now_ms, A.now_iso, A.cap, A.worker)
end

-- The index set of the sessions in `status` (a STATUS word).
local function idx(status) return K['idx_' .. status] end

-- S = {sid, session, history, chan}: queue an event of session S (numbered at flush). The
-- queue is flat, three slots an event (type, task or false, data or false), not a table
-- each: a batch of 10,000 runs queues 10,000 events. An event of another worker than the
-- call's (a run an enqueue starts for an idle worker) gives its type as {type, worker packed}.
local function emit(S, etype, task, data)
  S = S.S or S  -- sess(S)
  local ev = S.events or own(S, 'events', 'touched')
  local n = #ev
  ev[n + 1] = etype
  ev[n + 2] = task or false
  ev[n + 3] = data or false
end

-- How many events of session S are queued.
local function queued_events(S)
  return S.events and #S.events / 3 or 0
end

-- Does anyone listen on `chan`? Asked when a call has many events for a channel: one ask
-- costs about two PUBLISHes, and the script is atomic, so no one subscribes meanwhile.
-- Pattern subscribers count for every channel. Under an ACL that denies PUBSUB (the tenant
-- rules in the README) the ask is refused and everything is published.
-- On a Redis Cluster, sharded: SPUBLISH reaches only the master of the channel's slot, where
-- its listeners SSUBSCRIBE, and SHARDNUMSUB counts them there (no patterns: scripts.base swaps
-- this line).
local PUBLISH, NUMSUB, NUMPAT = 'PUBLISH', 'NUMSUB', 'NUMPAT'
local function heard(chan)
  local subs = redis.pcall('PUBSUB', NUMSUB, chan)
  if type(subs) ~= 'table' or subs[2] ~= 0 then return true end
  if G.patterns == nil then
    local n = NUMPAT and redis.pcall('PUBSUB', NUMPAT) or 0
    G.patterns = type(n) ~= 'number' or n > 0
  end
  return G.patterns
end

-- Number, keep and publish every queued event; call before a script returns. Late
-- listeners replay the history, so a channel nobody listens to is not published on.
local judge_ends, settle_all, reindex_all
local function flush()
  settle_all()
  judge_ends()
  reindex_all()
  local total = 0
  for _, S in ipairs(G.touched) do total = total + #S.events / 3 end
  local to_all = total < ASK_FROM or heard(G.chan_all)
  -- what events of one type share, made once a call: from ts to the session, and from the
  -- worker to the data (the call's worker's; another's, an enqueue's handed run, made each
  -- time); the ZADD arguments of a session's events, in one table for all (nz long)
  local heads, tail, zargs = {}, EV_WORKER .. G.worker_packed .. EV_DATA, {}
  for _, S in ipairs(G.touched) do
    local ev = S.events
    local n = #ev / 3
    if n > 0 then
      -- a session created by this very script has had its seq written with its record
      local last = S.seq_preset or redis.call('HINCRBY', S.session, 'seq', int(n))
      local first = last - n + 1
      local keep_from = math.max(first, last - G.cap + 1)
      local nz = 0
      local sid = pstr(S.sid)
      -- nobody can be subscribed to the channel of a session this script creates (its
      -- random id is not known outside yet); its listeners replay the history
      local chan = not S.seq_preset and (n < ASK_FROM or heard(S.chan)) and S.chan
      -- an event neither kept (past the history cap) nor published is not made at all
      for i = (chan or to_all) and 1 or keep_from - first + 1, n do
        local seq = first + i - 1
        local etype, task, data = ev[3 * i - 2], ev[3 * i - 1], ev[3 * i]
        local after, head = tail, heads[etype]
        if not head then
          -- (not met yet, or an event of another worker's: a table, see emit)
          if type(etype) == 'table' then etype, after = etype[1], EV_WORKER .. etype[2] .. EV_DATA end
          head = heads[etype]
          if not head then
            head = EV_TS .. G.ts_packed .. EV_TYPE .. PK[etype] .. EV_SESSION
            heads[etype] = head
          end
        end
        -- (a new session's first seqs, packed once a call; as strings to Redis: int)
        local packed = EV_HEAD .. (seq <= 8 and PK[seq] or P(seq)) .. head .. sid .. EV_TASK
          .. (task and pstr(task) or NIL) .. after .. (data or EMPTY_MAP)
        if seq >= keep_from then
          zargs[nz + 1] = INTSTR[seq] or seq  -- (int(seq), without the call)
          zargs[nz + 2] = packed
          nz = nz + 2
          if nz >= 1000 then
            redis.call('ZADD', S.history, unpack(zargs, 1, nz))
            nz = 0
          end
        end
        if chan then redis.call(PUBLISH, chan, packed) end
        if to_all then redis.call(PUBLISH, G.chan_all, packed) end
      end
      if nz > 0 then redis.call('ZADD', S.history, unpack(zargs, 1, nz)) end
      -- trimmed every TRIM_EVERY events, and always when this call kept only its last ones:
      -- older events left before them would hide the hole from a late listener (listen.fill)
      if last > G.cap and (keep_from > first or n >= TRIM_EVERY
          or math.floor(last / TRIM_EVERY) ~= math.floor((first - 1) / TRIM_EVERY)) then
        redis.call('ZREMRANGEBYSCORE', S.history, '-inf', last - G.cap)
      end
    end
    S.events = nil
  end
  G.touched = {}
  for state, delta in pairs(G.stats) do
    if delta ~= 0 then redis.call('HINCRBY', G.stats_key, state, int(delta)) end
  end
  G.stats = {}
end

-- The statuses a session has ended in: it is due for removal its retention_ms after.
local ENDED = {Completed = true, Failed = true, Stopped = true}

-- Session S's status becomes `new`; `also`: more fields written with it ({name, value, ...});
-- `keep`: its retention_ms if the caller read it (false: none; nil: read here if needed).
local function set_status(S, new, also, keep)
  S = sess(S)
  local old = S.status or redis.call('HGET', S.session, 'status')
  S.status = new
  if old == new then
    if also then redis.call('HSET', S.session, unpack(also)) end
    return old
  end
  if also then
    redis.call('HSET', S.session, 'status', new, unpack(also))
  else
    redis.call('HSET', S.session, 'status', new)
  end
  if G.defer then  -- (see reindex_all)
    if S.indexed_as == nil then
      S.indexed_as = old or false
      G.reindexed[#G.reindexed + 1] = S
    end
  else
    if old then redis.call('SREM', idx(old), S.sid) end
    redis.call('SADD', idx(new), S.sid)
  end
  -- retention (SPEC §9): due as it ends, no longer due as it runs again (or is destroyed)
  if ENDED[new] then
    if keep == nil then keep = redis.call('HGET', S.session, 'retention_ms') end
    if keep then redis.call('ZADD', G.retention, G.now_ms + tonumber(keep), S.sid) end
  elseif ENDED[old] then
    redis.call('ZREM', G.retention, S.sid)
  end
  return old
end

-- With G.defer (a worker's step), the status index sets are written at flush, one SREM and
-- one SADD per status for all the sessions whose status changed (a claim starts many
-- sessions): each session leaves the set of the status it had when the call began and joins
-- that of the status it has now.
reindex_all = function()
  if #G.reindexed == 0 then return end
  local leave, join, order = {}, {}, {}
  local function add(sets, status, sid)
    if not sets[status] then
      sets[status] = {}
      order[#order + 1] = status
    end
    local list = sets[status]
    list[#list + 1] = sid
  end
  for _, S in ipairs(G.reindexed) do
    local from, to = S.indexed_as, S.status
    S.indexed_as = nil
    if from ~= to then
      if from then add(leave, from, S.sid) end
      if to then add(join, to, S.sid) end
    end
  end
  G.reindexed = {}
  for _, pass in ipairs({{'SREM', leave}, {'SADD', join}}) do
    local cmd, sets = pass[1], pass[2]
    for _, status in ipairs(order) do
      local sids = sets[status]
      if sids then
        for c = 1, #sids, 1000 do
          redis.call(cmd, idx(status), unpack(sids, c, math.min(c + 999, #sids)))
        end
      end
    end
  end
end

local function stat(state, n)
  G.stats[state] = (G.stats[state] or 0) + n
end

-- Mark session S to have its end judged when the script flushes (see judge_ends).
local function maybe_end(S)
  S = sess(S)
  if not S.judge then
    S.judge = true
    G.ending[#G.ending + 1] = S
  end
end

-- The states of a run that has not ended: one leaving them may end its session.
local LIVE = {queued = true, deferred = true, held = true, started = true}

-- The live counts of each session (by its key) as the script's last HINCRBY of each left
-- them: a count above zero means the session has not ended (end_if_done). Every change of
-- a live count goes through `move`, but for enqueue's increments and its HSET of a new
-- session's counts, which forgets them (`forget_counts`).
G.live = {}
local function live_count(S, state, n)
  local known = G.live[S.session]
  if not known then
    known = {}
    G.live[S.session] = known
  end
  known[state] = n
end
local function forget_counts(S) G.live[S.session] = nil end

-- Move n runs of session S from one state to another (either may be nil). A run leaving
-- the live states (ended, or dropped from the session) marks its session for maybe_end:
-- every path a run ends by - a finish, a refusal, a cancel, a recovery - judges its
-- session's end here, once per session and script call.
local function move(S, from, to, n)
  S = sess(S)
  n = n or 1
  if LIVE[from] and not LIVE[to] then maybe_end(S) end
  if G.defer then  -- written by `settle`
    local d = own(S, 'delta', 'deferred')
    if from then
      d[from] = (d[from] or 0) - n
      stat(from, -n)
    end
    if to then
      d[to] = (d[to] or 0) + n
      stat(to, n)
    end
    return
  end
  if from then
    local left = redis.call('HINCRBY', S.session, from, int(-n))
    if LIVE[from] then live_count(S, from, left) end
    stat(from, -n)
  end
  if to then
    local now = redis.call('HINCRBY', S.session, to, int(n))
    if LIVE[to] then live_count(S, to, now) end
    stat(to, n)
  end
end

-- With G.defer (a worker's step, run.lua), `move` keeps the changes of a session's counts
-- in S.delta, and they are written here, one HINCRBY a count and session for the whole call
-- (a step starts or finishes many runs of one session): before the session's counts are
-- read (`room`), and at flush, before sessions' ends are judged.
local function settle(S)
  local d = S.delta
  if not d then return end
  S.delta = nil
  for state, n in pairs(d) do
    if n ~= 0 then
      local now = redis.call('HINCRBY', S.session, state, int(n))
      if LIVE[state] then live_count(S, state, now) end
    end
  end
end
settle_all = function()
  for _, S in ipairs(G.deferred) do settle(S) end
  G.deferred = {}
end

-- A Running/Pending session with nothing queued, deferred, held or started has ended. A
-- live count known above zero (see live_count) settles it without reading the session.
local function end_if_done(S)
  local known = G.live[S.session]
  if known then
    for _, n in pairs(known) do
      if n > 0 then return nil end
    end
  end
  local v = redis.call('HMGET', S.session, 'status', 'queued', 'deferred', 'held', 'started',
    'failed', 'cron', 'retention_ms')
  S.status = v[1]
  if v[1] ~= 'Running' and v[1] ~= 'Pending' then return nil end
  if num(v[2]) + num(v[3]) + num(v[4]) + num(v[5]) + num(v[7]) > 0 then return nil end
  local final = 'Completed'
  if num(v[6]) > 0 then final = 'Failed' end
  set_status(S, final, {'finished_at', G.now_ms}, v[8])
  local etype = 'session.completed'
  if final == 'Failed' then etype = 'session.failed' end
  emit(S, etype, nil, map({'status', P(final)}))
  return final
end

-- Judge the end of every session marked by maybe_end, after all of the script's changes:
-- the session.completed/failed event comes after the task events that led to it.
judge_ends = function()
  for _, S in ipairs(G.ending) do
    S.judge = nil
    end_if_done(S)
    if S.seq_preset and S.seq_preset ~= queued_events(S) then
      -- a session this script created has its seq written with its record (see flush)
      S.seq_preset = queued_events(S)
      redis.call('HSET', S.session, 'seq', S.seq_preset)
    end
  end
  G.ending = {}
end

-- A run's keys (contract.py RUN_BLOCK, by name: `k`, a table of its own) made the table the
-- functions below take, in place (a table made costs Redis more than a command does): its
-- session's table S, sid, and RQ's started registry as `wip`. Runs of one session share
-- their session's table (events, status), so that one flush numbers them all.
G.sessions = {}
local function run_block(k, sid)
  local S = G.sessions[sid]
  if not S then
    S = {sid = sid, session = k.session, history = k.history, chan = k.chan,
      running = k.running, held = k.held}
    G.sessions[sid] = S
  end
  k.S, k.sid, k.session, k.running, k.held, k.wip = S, sid, S.session, S.running, S.held,
    k.started
  return k
end


-- Park a run with its session's held runs, ordered by task number (the order runs were
-- added), whenever each got there.
local function hold(B, id)
  redis.call('ZADD', B.held, run_number(id), id)
end

-- Wake the workers waiting idle for `list` (a queue's wake list, keys.wake): a token in the
-- list, at most one, for a BLPOP. On a Redis Cluster also a message on the shard channel of
-- the same name, for the workers waiting there (worker.shardwake: a BLPOP takes the keys of one
-- slot, and such a worker waits on every partition).
local function wake_list(list)
  redis.call('LPUSH', list, '1')
  redis.call('LTRIM', list, 0, 0)
  if PUBLISH == 'SPUBLISH' then redis.call(PUBLISH, list, '1') end
end

local function wake(B) wake_list(B.wake) end

-- -- fair share (SPEC §9) --------------------------------------------------------------------
-- A queue's line (RQ's queue list, B.queue) holds the next run of each session with runs
-- waiting on that queue, and workers take from the line in turn; the session's other waiting
-- runs wait in its own list for the queue (B.squeue), in add order. The session hash counts
-- the session's entries in each line (field 'line:' .. the line's key). A session whose
-- max_running runs are running leaves the line - its queue noted in B.throttled - until one
-- of them ends (`unthrottle`).
local function line_field(B) return 'line:' .. B.queue end
local function throttle_entry(B) return P({B.queue, B.wake, B.squeue}) end

-- Queue run `id` of B's session on B's queue: `front` puts it ahead of everyone (a run given
-- back, released in order, stepped); else it waits behind the session's other runs.
local function push_run(B, id, front)
  local session = sess(B).session
  redis.call('HINCRBY', G.depths, B.queue, '1')
  if front or (num(redis.call('HGET', session, line_field(B))) == 0
      and redis.call('SISMEMBER', B.throttled, throttle_entry(B)) == 0) then
    if front then redis.call('LPUSH', B.queue, id) else redis.call('RPUSH', B.queue, id) end
    redis.call('HINCRBY', session, line_field(B), '1')
  else
    redis.call('RPUSH', B.squeue, id)
  end
  wake(B)
end

-- Put run `id`, taken from B's line when its session had no room (max_running), back in the
-- session's own list for the queue, in add order: ahead of the runs there, as it was the
-- session's next - unless the session had several runs in the line (put at its front:
-- released by play, given back), taken in turn: each then goes after those taken before it.
local PARK_SCAN = 64  -- (further than this, after the 64th: the line holds few of a session)
local function park(B, id)
  local n = run_number(id)
  local first = redis.call('LINDEX', B.squeue, 0)
  if not first or run_number(first) > n then
    redis.call('LPUSH', B.squeue, id)
    return
  end
  local head = redis.call('LRANGE', B.squeue, 1, PARK_SCAN - 1)
  for _, other in ipairs(head) do
    if run_number(other) > n then
      redis.call('LINSERT', B.squeue, 'BEFORE', other, id)
      return
    end
  end
  redis.call('LINSERT', B.squeue, 'AFTER', head[#head] or first, id)
end

-- Queue ids[from..to] (runs of B's session, in order) at the back of B's queue.
local function push_runs(B, ids, from, to)
  if from > to then return end
  push_run(B, ids[from], false)
  if to > from then redis.call('HINCRBY', G.depths, B.queue, to - from) end
  for c = from + 1, to, 1000 do
    redis.call('RPUSH', B.squeue, unpack(ids, c, math.min(c + 999, to)))
  end
end

-- How many more runs of the session may start now (nil: no cap).
local function room(S)
  settle(S)
  if S.cap == nil then S.cap = tonumber(redis.call('HGET', S.session, 'max_running')) or false end
  if not S.cap then return nil end
  return S.cap - num(redis.call('HGET', S.session, 'started'))
end

-- A run of B's session ended (or gave back its slot): a line its session left at its cap
-- gets the session's next run again.
local function unthrottle(B)
  local S = sess(B)
  -- (known empty: a step finishing many runs of one session asks once)
  if S.unthrottled then return end
  if redis.call('SCARD', B.throttled) == 0 then
    S.unthrottled = true
    return
  end
  local left = room(S)
  if left ~= nil and left <= 0 then return end
  local entry = redis.call('SPOP', B.throttled)
  local line = cmsgpack.unpack(entry)
  local nxt = redis.call('LPOP', line[3])
  if nxt then
    redis.call('RPUSH', line[1], nxt)
    redis.call('HINCRBY', S.session, 'line:' .. line[1], '1')
    wake_list(line[2])
  end
end

local function cancel_run(B, id, state, reason)
  redis.call('HSET', B.job, 'state', 'canceled', 'status', 'canceled', 'ended_at', G.now_iso)
  move(B, state, 'canceled')
  emit(B, 'task.canceled', id, map({'reason', P(reason)}))
end

-- An event type as worker W's: plain when W is the call's own worker (see emit).
local function as_of(W, etype)
  if W.packed == G.worker_packed then return etype end
  return {etype, W.packed}
end

-- What a start shows: a Pending session becomes Running (its first start), task.started.
local function show_start(B, id, W, attempts, status)
  local S = sess(B)
  if status == 'Pending' then
    if S.started_at == false then  -- (known not to have started before: one write)
      set_status(S, 'Running', {'started_at', G.now_ms})
      S.started_at = G.now_ms
    else
      set_status(S, 'Running')
      if redis.call('HSETNX', S.session, 'started_at', G.now_ms) == 0 then
        redis.call('HDEL', S.session, 'finished_at')
      end
    end
    emit(S, as_of(W, 'session.started'), nil, nil)
  end
  emit(S, as_of(W, 'task.started'), id, '\129\167attempt' .. P(attempts))
end

-- A failed run RQ put back on its queue: queued again, its session (if it had ended) Running.
local function requeued(B, id)
  local S = sess(B)
  S.status = S.status or redis.call('HGET', S.session, 'status')
  if S.status == 'Completed' or S.status == 'Failed' then
    local was = S.status
    set_status(S, 'Running')
    redis.call('HDEL', S.session, 'finished_at')
    emit(S, 'session.resumed', nil, map({'from', P(was)}))
  end
  redis.call('HSET', B.job, 'state', 'queued')
  redis.call('ZREM', B.failed, id)
  move(B, 'failed', 'queued')
  emit(B, 'task.queued', id, map({'reason', P('requeued with RQ')}))
end

-- Start run `id` for worker W (its runs list holds it): returns {result, data, sq, timeout,
-- attempt}, result 'run' when W is to run it now; else the run is parked with its paused
-- session's held runs ('held'), not run ('skip': canceled or not queued; 'gone': no such run)
-- and off W's list. A run W started already (a lost reply) is answered again.
local function start(B, id, W)
  local j = redis.call('HMGET', B.job, 'state', 'data', 'sq', 'timeout', 'attempts',
    'worker_name', 'pass', 'status')
  if j[1] == 'failed' and j[8] == 'queued' then
    -- put back on its queue by RQ (`rq requeue`, Job.requeue): a retry, asked for by hand
    j[1] = 'queued'
    requeued(B, id)
  end
  if j[1] == 'started' and j[6] == W.name then
    -- started by us already: the reply to an earlier try of this call was lost
    return {'run', j[2], j[3] or false, j[4] or false, num(j[5])}
  elseif not j[1] then
    redis.call('LREM', W.runs, 1, id)
    if redis.call('EXISTS', B.job) == 1 then
      -- an RQ job that is not a sessionq run (enqueued by RQ's own API): not run, marked
      -- failed where RQ's readers look
      local why = 'not a sessionq run: a sessionq worker runs only what sessionq enqueued'
      redis.call('HSET', B.job, 'status', 'failed', 'ended_at', G.now_iso, 'exc_info', why)
      redis.call('ZADD', B.failed, '+inf', id)
      return {'foreign', why, false, false, 0}
    end
    return {'gone', 'no such job', false, false, 0}
  elseif j[1] ~= 'queued' then
    redis.call('LREM', W.runs, 1, id)
    return {'skip', j[1], false, false, 0}
  end
  local S = sess(B)
  local status = S.status or redis.call('HGET', B.session, 'status')
  S.status = status
  local passes = false
  if status == 'Paused' then
    -- a run step() released passes; so does one run per step() taken while none was held
    if j[7] then
      redis.call('HDEL', B.job, 'pass')
      passes = true
    elseif num(redis.call('HGET', B.session, 'step')) > 0 then
      redis.call('HINCRBY', B.session, 'step', -1)
      passes = true
    end
  end
  if status == 'Paused' and not passes then
    -- parked in order with the session's held runs; play/step release them
    redis.call('LREM', W.runs, 1, id)
    hold(B, id)
    redis.call('HSET', B.job, 'state', 'held', 'status', 'deferred')
    move(B, 'queued', 'held')
    return {'held', false, false, false, 0}
  elseif status ~= 'Running' and status ~= 'Pending' and status ~= 'Paused' then
    -- destroyed, stopped, or ended by a stop (a queued run left behind is not run)
    redis.call('LREM', W.runs, 1, id)
    if status then cancel_run(B, id, 'queued', 'session ' .. status) end
    return {'skip', 'canceled', false, false, 0}
  end
  local attempts = num(j[5]) + 1
  redis.call('HSET', B.job, 'state', 'started', 'status', 'started', 'started_at', G.now_iso,
    'worker_name', W.name, 'attempts', int(attempts))
  gathered('ZADD', B.wip, '+inf', id .. ':' .. NUMSTR[attempts])
  gathered('SADD', B.running, id)
  move(B, 'queued', 'started')
  -- a run handed to an idle worker (prelude `hand`) shows its start when the worker
  -- takes it (`took`): were the worker lost before, the run goes back unbegun, unseen
  if not W.defer then show_start(B, id, W, attempts, status) end
  return {'run', j[2], j[3] or false, j[4] or false, attempts}
end

-- A worker took the run an enqueue handed it (started quietly, see `start`): the session's
-- first start and task.started come now, as the worker's own events.
local function took(S, id, attempts)
  S.status = S.status or redis.call('HGET', S.session, 'status')
  show_start(S, id, {packed = G.worker_packed}, attempts, S.status)
end

-- Hand the first runs queued on queue block q (named `qname`) to workers waiting idle on it
-- (run.lua lists them): each run is started for its worker here, as that worker's claim
-- would, and the worker's BLPOP takes it from its inbox - a round trip less for a run that
-- finds a worker waiting. Only on an empty queue (runs queued before go first) and to a
-- worker whose heartbeat is fresh by Redis's clock, as heartbeats are stamped (a lost one's
-- runs wait for the reaper). `ids`: the runs' ids; `run_of(k)`: the k-th one's session table
-- and job key. Returns how many of `ids` it dealt with. (An enqueue's: K.idle_workers,
-- K.workers, A.fresh_ms - enqueue.lua, create.lua.)
local function hand(q, qname, ids, run_of)
  if redis.call('LLEN', q.list) > 0 then return 0 end
  local done, fresh_since = 0, nil
  while done < #ids do
    local name = redis.call('LPOP', q.idle_line)
    if name and not fresh_since then fresh_since = redis_now_ms() - A.fresh_ms end
    if not name then break end
    -- an entry of a worker no longer waiting (it claimed, was handed a run, left or was
    -- lost), or one that does not serve the queue (a lost worker's name back), is dropped
    local serves = ',' .. (redis.call('HGET', key_rq_worker(name), 'queues') or '') .. ','
    if string.find(serves, ',' .. qname .. ',', 1, true)
        and redis.call('SREM', K.idle_workers, name) == 1
        and num(redis.call('ZSCORE', K.workers, name)) >= fresh_since then
      done = done + 1
      local id = ids[done]
      local B, job = run_of(done)
      local W = {name = name, packed = P(name), runs = key_worker_runs(name), defer = true}
      redis.call('RPUSH', W.runs, id)
      local st = start({job = job, S = B, session = B.session, sid = B.sid,
        running = B.running, held = B.held, queue = q.list, wake = q.wake,
        failed = q.failed, wip = q.started}, id, W)
      if st[1] == 'run' then
        redis.call('RPUSH', key_worker_inbox(name),
          cmsgpack.pack({id, qname, st[2], st[3], st[4], st[5]}))
        redis.call('HSET', key_rq_worker(name), 'current_job', id, 'holds', 0)  -- (recover.lua)
        -- until the worker says it took it: a frozen worker's BLPOP may take it from the
        -- inbox, yet it never began
        redis.call('SET', key_worker_handed(name), id)
      else
        -- not to run after all: the worker goes on waiting, at the front of the line
        redis.call('SADD', K.idle_workers, name)
        redis.call('LPUSH', q.idle_line, name)
      end
    end
  end
  return done
end

-- The run failed or was lost: retry it while retries are left, else record the failure.
-- A retry waits `retry_delay_ms` (doubled per attempt with backoff "exponential", the same
-- with "fixed"; +-10% jitter) in the schedule, not in a worker; without a delay it is queued.
local function fail_or_retry(B, id, error_enc, attempts, retries_left, retry_allowed, schedule)
  if retry_allowed and retries_left > 0 then
    local r = redis.call('HMGET', B.job, 'retry_delay_ms', 'backoff')
    redis.call('HSET', B.job, 'error', error_enc, 'retries_left', retries_left - 1)
    redis.call('HINCRBY', B.job, 'number_of_retries', 1)
    local data = {'error', error_enc, 'attempt', P(attempts), 'retries_left', P(retries_left - 1)}
    local delay = tonumber(r[1])
    if delay and delay > 0 then
      if r[2] ~= 'fixed' then delay = delay * 2 ^ (attempts - 1) end
      local micros = tonumber(redis.call('TIME')[2])
      local due = G.now_ms + math.floor(delay * (0.9 + 0.2 * (micros % 1000) / 1000))
      redis.call('HSET', B.job, 'state', 'deferred', 'status', 'deferred', 'due', due)
      redis.call('ZADD', schedule, due, id)
      move(B, 'started', 'deferred')
      data[#data + 1] = 'due'
      data[#data + 1] = P(due / 1000.0)
    else
      redis.call('HSET', B.job, 'state', 'queued', 'status', 'queued')
      push_run(B, id, false)
      move(B, 'started', 'queued')
    end
    emit(B, 'task.retrying', id, map(data))
    return 'retrying'
  end
  redis.call('HSET', B.job, 'state', 'failed', 'status', 'failed', 'ended_at', G.now_iso,
    'error', error_enc)
  redis.call('ZADD', B.failed, '+inf', id)
  move(B, 'started', 'failed')
  emit(B, 'task.failed', id, map({'error', error_enc, 'attempt', P(attempts)}))
  return 'failed'
end

-- -- dependencies and schedules (issue 4) ----------------------------------------------------
local TERMINAL = {succeeded = true, failed = true, canceled = true}

-- Can a run with condition `run_if` start, given its parents' states (nil: parent gone)?
-- Returns 'ready', 'wait', 'never' (with the reason) or 'error' (with the reason).
local function judge(run_if, parent_ids, states)
  local waiting = false
  for i, pid in ipairs(parent_ids) do
    local st = states[i]
    if not st then return 'error', 'dependency ' .. pid .. ': no such task' end
    if TERMINAL[st] then
      if run_if == 'succeeded' and st ~= 'succeeded' then
        return 'never', 'dependency ' .. pid .. ' ' .. st .. ' (run_if=succeeded)'
      elseif run_if == 'failed' and st ~= 'failed' then
        return 'never', 'dependency ' .. pid .. ' ' .. st .. ' (run_if=failed)'
      end
    else
      waiting = true
    end
  end
  if waiting then return 'wait', nil end
  return 'ready', nil
end

-- The state of a run's parent as a plan names it (`ref`): by the KEYS index (KX) of its job
-- hash when it is of the call's partition - read now, in the same atomic step; by the state
-- it had when read in its own partition, just before the call, when it is of another one
-- (keys.Layout: no call spans two partitions) - '' when it named no task then.
local function dep_state(ref)
  if type(ref) == 'number' then return redis.call('HGET', KX(ref), 'state') end
  if ref == '' then return nil end
  return ref
end

-- The RQ `status` field that goes with each of our run states.
local RQ_STATUS = {queued = 'queued', deferred = 'deferred', held = 'deferred',
  started = 'started', succeeded = 'finished', failed = 'failed', canceled = 'canceled'}

-- A run whose conditions hold leaves `from`: scheduled when `due` (ms) is still ahead, parked
-- with the held runs when its session is paused, else queued. Returns the new state.
local function release(B, id, from, due, schedule_key, front)
  local to
  if due and due > G.now_ms then
    redis.call('ZADD', schedule_key, due, id)
    to = 'deferred'
  else
    local S = sess(B)
    S.status = S.status or redis.call('HGET', B.session, 'status')
    if S.status == 'Paused' then
      hold(B, id)
      to = 'held'
    else
      push_run(B, id, front)
      to = 'queued'
    end
  end
  if to ~= from then
    redis.call('HSET', B.job, 'state', to, 'status', RQ_STATUS[to])
    move(B, from, to)
  end
  return to
end

-- Record that run `id` waits on the run whose job hash is `parent_job` (its `children`).
local function add_child(parent_job, id)
  local raw = redis.call('HGET', parent_job, 'children')
  local list = {}
  if raw then list = cmsgpack.unpack(raw) end
  for _, c in ipairs(list) do if c == id then return end end
  list[#list + 1] = id
  redis.call('HSET', parent_job, 'children', cmsgpack.pack(list))
end

-- A run that can never start: canceled with the reason, or failed when the check itself
-- went wrong and the session does not silence condition errors.
local function refuse(B, id, from, verdict, reason, silent)
  if verdict == 'error' and not silent then
    redis.call('HSET', B.job, 'state', 'failed', 'status', 'failed', 'ended_at', G.now_iso,
      'error', P(reason))
    redis.call('ZADD', B.failed, '+inf', id)
    move(B, from, 'failed')
    emit(B, 'task.failed', id, map({'error', P(reason), 'attempt', P(0)}))
    return 'failed'
  end
  if verdict == 'error' then reason = 'condition not met: ' .. reason end
  redis.call('HSET', B.job, 'error', P(reason))
  cancel_run(B, id, from, reason)
  return 'canceled'
end
