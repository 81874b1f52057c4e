-- Task ids for runs added to a session after its create (Session.add, add_runs, a cron run's
-- next firing): `count` numbers from the session's counter; the last is returned, or -1 for a
-- session that is not there (nothing is written then). Ids are never handed out twice, even
-- by a server whose data is older than what it handed out - a failover to a lagging replica,
-- or a restart that lost its last writes (prelude `data_gen`): a session whose counter last
-- moved under another generation jumps ahead first, to a round ID_ROUND at least ID_JUMP on,
-- plus one for every µs between the beginnings of that generation and this one. The last
-- part keeps apart two generations that both start from the same old counter (two failovers
-- in a row, the first one's writes lost too): the later one lands past all the earlier one
-- handed out, unless it handed out more than one id of the session a µs (with clocks in step
-- between the servers; a clock behind counts as no time). SESSIONQ_WAIT_REPLICAS covers what
-- is beyond this rule.
-- Its contract: common/scripts/contracts.py RESERVE.
local ID_JUMP, ID_ROUND = 10000000, 1000000
local gen = data_gen(true)
local s = redis.call('HMGET', K.session, 'status', 'next', 'gen')
if not s[1] then return -1 end
if s[3] ~= gen then
  local since_us = math.max(0, tonumber(gen) - (tonumber(s[3]) or tonumber(gen)))
  local n = (math.floor(num(s[2]) / ID_ROUND) + 1) * ID_ROUND + ID_JUMP + since_us
  redis.call('HSET', K.session, 'next', string.format('%d', n), 'gen', gen)
end
return redis.call('HINCRBY', K.session, 'next', A.count)
