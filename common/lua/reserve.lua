-- Task ids for runs added to a session after its create (Session.add, add_runs, a cron run's
-- next firing): `count` numbers from the session's counter; the last is returned, or -1 for a
-- session that is not there (nothing is written then). Ids are never handed out twice, even
-- by a server whose data is older than what it handed out - a failover to a lagging replica,
-- or a restart that lost its last writes (prelude `data_gen`): a session whose counter was
-- last moved under another generation jumps ahead first, by at least ID_JUMP, to a round
-- ID_ROUND (a session adding more than ID_JUMP ids in the writes a failover loses is beyond
-- this rule; SESSIONQ_WAIT_REPLICAS covers it).
-- Its contract: common/scripts/contracts.py RESERVE.
local ID_JUMP, ID_ROUND = 10000000, 1000000
local gen = data_gen(true)
local s = redis.call('HMGET', K.session, 'status', 'next', 'gen')
if not s[1] then return -1 end
if s[3] ~= gen then
  local n = num(s[2])
  n = (math.floor(n / ID_ROUND) + 1) * ID_ROUND + ID_JUMP
  redis.call('HSET', K.session, 'next', string.format('%d', n), 'gen', gen)
end
return redis.call('HINCRBY', K.session, 'next', A.count)
