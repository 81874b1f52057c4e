-- A run waits on runs of another partition (SPEC §9: depends_on names a task of another
-- session by id; keys.Layout: no call spans two partitions): each of these parents, runs of
-- this partition, lists the child among its `children` (prelude `add_child`, as enqueue.lua
-- lists a child of its own partition), so that the worker that ends the parent judges the
-- child in the child's partition (worker.schedule resolve_children). The producer calls it
-- once the child is written, waiting (producer.links).
-- Its contract (common/scripts/contracts.py LINK): a `parent` key block (its job hash) and a
-- `link` argument block (the child's id) per link.
-- Returns each parent's state as the link is made, in order; false for a parent that names
-- no task (then no child is listed): what the caller judges the child by if it has ended.
local out = {}
for i = 1, A.nlinks do
  local job = KB.parent_job(i)
  local state = redis.call('HGET', job, 'state')
  if state then add_child(job, AB.link(i).child) end
  out[i] = state or false
end
return out
