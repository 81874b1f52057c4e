"""Runs that wait on runs of another partition (SPEC §9: `depends_on` names a task of another
session by id; keys.Layout: no script call spans two partitions) - what an add does for them
around the session's one atomic write (enqueue.lua).

1. Before it, each such parent's state is read in its own partition (`parent_states`); one
   that names no task is refused by enqueue.lua, as a missing parent of its own partition is
   (ValidationError naming depends_on; the flush's other changes written).
   enqueue.lua judges the run by these states as it judges by those of its own partition's
   parents (read in the call): a run whose parents have all ended is queued or canceled as
   it is written.
2. After it, a run that may have been written waiting - all but one whose parents are all
   of other partitions and had all ended - is listed among each such parent's children there
   (`link`: link.lua, one call per partition), as enqueue.lua lists a waiting run with every
   parent of its own partition, so that the worker that ends a parent (again, once restarted)
   judges the run (worker.schedule.resolve_children, with the parent's state read there). A
   parent that ended between the read and the link - its worker found no child of it to
   tell - is judged here at once, by the state the link saw (control.lua resolve), and so are
   the runs of this add that wait on a run that ends so.

A producer lost between the write and the link, or whose link fails (a partition's master
unreachable: session._flush logs it and goes on, the add written), leaves the run waiting in
its partition's set of waiting runs, which the workers' sweep judges (worker.schedule),
reading the parents' states where they are. The sweep is also what tells the runs that other
producers listed as children of a run of this add between its write and step 2, when step 2
ends that run: step 2 judges only the runs of this add. Nothing here runs with one
partition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sessionq.common import codec
from sessionq.common.scripts import Scripts
from sessionq.common.vocabulary import ENDED_TASK_STATES
from sessionq.producer.plans import Batch, Command, Plan, ScriptCall, texts

# a run written with parents: (run id, its queue, its parents' ids)
Waiting = tuple[str, str, Sequence[str]]


def parent_states(
    scripts: Scripts, sid: str, runs: Iterable[Sequence[str]]
) -> Plan[dict[str, str]]:
    """The state of every parent of another partition than session `sid`'s that `runs` (each
    a run's parent ids) wait on, read there (one batch); '' for one that names no task, which
    enqueue.lua refuses ('nodep': ValidationError naming depends_on) as it refuses a missing
    parent of its own partition - in the flush's transaction, whose other changes are written.
    `scripts`: the whole namespace's."""
    layout = scripts.layout
    home = layout.partition_of(sid)
    ids = list(dict.fromkeys(parent for parents in runs for parent in parents
                             if layout.partition_of(parent) != home))  # fmt: skip
    if not ids:
        return {}
    read = yield Batch([Command.of("hget", scripts.rq.job(p), "state") for p in ids])
    states: dict[str, str] = {}
    for parent, state in zip(ids, read, strict=True):
        states[parent] = codec.text(state) if state is not None else ""
    return states


def link(
    scripts: Scripts, sid: str, runs: Sequence[Waiting], states: Mapping[str, str]
) -> Plan[None]:
    """Step 2 of the module docstring for `runs`, the runs of session `sid` the add wrote with
    parents (not those an existing key or name stood for), given `states` (parent_states)."""
    # every run that may wait (on a parent of its own partition too: enqueue.lua lists a
    # waiting child with every parent); not one whose parents are all of another partition and
    # had all ended when read: judged as written. (A run written queued or ended is listed in
    # vain: resolve leaves alone a run that waits no more.)
    waiting = [r for r in runs if any(p in states for p in r[2])
               and not all(states.get(p) in ENDED_TASK_STATES for p in r[2])]  # fmt: skip
    links = [(parent, run_id) for run_id, _, parents in waiting for parent in parents
             if parent in states]  # fmt: skip
    if not links:
        return  # (every parent of another partition had ended: judged as written)
    now: dict[str, str | None] = dict(states)
    for pairs, keys, args in scripts.link_calls(links):
        seen = yield ScriptCall("link", keys, args)
        for (parent, _child), state in zip(pairs, seen, strict=True):
            now[parent] = codec.text(state) if state else None
    ended = {p for p, state in now.items()
             if state != states[p] and (state is None or state in ENDED_TASK_STATES)}  # fmt: skip
    judge = [r for r in waiting if ended.intersection(r[2])]
    while judge:
        call = scripts.resolve_call(sid, judge, now)
        reply = texts((yield ScriptCall("control", *call)))
        gone = set(reply[1:]) if reply[0] == "ok" else set()
        judge = [r for r in runs if gone.intersection(r[2])]
