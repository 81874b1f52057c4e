-- Move up to ARGV[2] run ids from the worker's queues, in priority order, onto the worker's
-- own runs list, atomically: a claimed run always names the worker that holds it.
-- KEYS: [1] the worker's runs list, then ARGV[1] queue lists, then their wake lists.
-- Returns a flat list: queue index, run id, queue index, run id, ...
-- A worker takes at most a quarter of what a queue holds (at least one), so that the last
-- runs of a queue - often long ones that wait on a dependency - spread over idle workers.
local nq, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, nq do
  if want <= 0 then break end
  local share = math.max(1, math.floor(redis.call('LLEN', KEYS[1 + i]) / 4))
  local ids = redis.call('LPOP', KEYS[1 + i], math.min(want, share))
  if ids then
    for _, id in ipairs(ids) do
      redis.call('RPUSH', KEYS[1], id)
      out[#out + 1] = i
      out[#out + 1] = id
    end
    want = want - #ids
  end
  if redis.call('LLEN', KEYS[1 + i]) > 0 then
    -- more is waiting: wake the next idle worker too
    redis.call('LPUSH', KEYS[1 + nq + i], '1')
    redis.call('LTRIM', KEYS[1 + nq + i], 0, 0)
  end
end
return out
