"""Every script's declared contract (contract.py): keys, arguments and blocks, by name.

The Python packers (the modules beside this one) and the Lua prologues are both made from
these; tests/common/test_contract.py checks each script's body against its contract.
"""

from __future__ import annotations

from sessionq.common.scripts.contract import NUMBER, TEXT, Block, Contract
from sessionq.common.vocabulary import Status

# What every state-changing script takes (prelude.lua `load_globals`)
STATUS_KEYS = tuple(f"idx_{status.value}" for status in Status)
GLOBAL_KEYS = ("chan_all", *STATUS_KEYS, "counters", "depths", "retention")
CLOCK_ARGS = (("now_ms", NUMBER), ("now_iso", TEXT), ("cap", NUMBER), ("worker", TEXT))
# One run's keys (prelude.lua `run_block`)
RUN_BLOCK = ("job", "session", "history", "chan", "running", "held", "started", "finished",
             "failed", "queue", "wake", "squeue", "throttled")  # fmt: skip
# the key builders a script needs to queue a run of a session it finds itself (fair share)
QUEUEING = ("queue", "wake", "session_queue", "session_throttled")
# The Redis 7 flags (Contract.flags) of a script that must run even when Redis is full
# (maxmemory, noeviction): it frees memory (destroy) or keeps workers alive and accounted
# for (heartbeat, reap, recover, took: a handed run's start, sent as a note nobody awaits),
# writing little. Every other script is refused whole, before it runs, when Redis is full.
RUNS_WHEN_FULL = ("allow-oom",)
# A session's own keys, as the control scripts take them
SESSION_KEYS = ("session", "history", "chan", "running", "held")

STEP = Contract(
    "run",
    keys=(
        *GLOBAL_KEYS,
        "runs",
        "rq_worker",
        "inbox",
        "idle_workers",
        "handed",
        "schedule",
        "suspended",
    ),  # fmt: skip
    key_blocks=(
        Block(
            "queue", ("list", "wake", "started", "finished", "failed", "idle_line"), ("nqueues",)
        ),
        Block("run", RUN_BLOCK, ("nfinish", "nstart")),
    ),  # fmt: skip
    # per call first, then what every call of one worker sends alike (nqueues, control and
    # the queue names: its FastLane packs them once)
    args=(
        *CLOCK_ARGS,
        ("nfinish", NUMBER),
        ("nstart", NUMBER),
        ("nclaim", NUMBER),
        ("waits", NUMBER),
        ("nqueues", NUMBER),
        ("control", NUMBER),
    ),
    arg_blocks=(
        Block("queue", ("name",), ("nqueues",)),
        Block("finish", ("id", "sid", "outcome", "payload", "duration_ms"), ("nfinish",)),
        Block("start", ("id", "sid"), ("nstart",)),
    ),
    # `current`: the run the worker goes on to run; `holds` (1): it may hold back the finishes
    # of the runs after this step (worker.loop FINISHES_HELD_MAX), so recovery cannot take
    # `current` for the run it was running (recover.lua)
    tail=(("current", TEXT), ("holds", NUMBER)),
    builders=(
        "job",
        "session",
        "history",
        "events_channel",
        "session_running",
        "session_held",
        *QUEUEING,
    ),
)

TOOK = Contract(
    "took",
    keys=(*GLOBAL_KEYS, "session", "history", "chan", "handed"),
    args=(*CLOCK_ARGS, ("sid", TEXT), ("id", TEXT), ("attempt", NUMBER)),
    builders=("job",),
    flags=RUNS_WHEN_FULL,
)

# enqueue.lua's keys of a session, and of a queue (a block each)
ENQUEUE_SESSION = ("session", "history", "chan", "tasks", "held", "kind", "owner", "names",
                   "task_keys", "running")  # fmt: skip
ENQUEUE_QUEUE = ("list", "wake", "failed", "started", "idle_line")
# create.lua's of its session: enqueue.lua's but those of run names and keys (none given)
CREATE_SESSION = tuple(key for key in ENQUEUE_SESSION if key not in ("names", "task_keys"))
ENQUEUE = Contract(
    "enqueue",
    keys=(
        *GLOBAL_KEYS,
        "sessions",
        "rq_queues",
        "schedule",
        "waiting",
        "names",
        "idle_workers",
        "workers",
        "epoch",
    ),  # fmt: skip
    key_blocks=(
        Block("session", ENQUEUE_SESSION, ("nsessions",)),
        Block("queue", ENQUEUE_QUEUE, ("nqueues",)),
        Block("job", ("job",), ("nruns",)),
    ),  # fmt: skip
    args=(
        *CLOCK_ARGS,
        ("nsessions", NUMBER),
        ("nqueues", NUMBER),
        ("nruns", NUMBER),
        ("fresh_ms", NUMBER),
        ("plan", TEXT),
    ),  # fmt: skip
    extra_keys=True,
    builders=("worker_runs", "worker_inbox", "rq_worker", "worker_handed", *QUEUEING),
)

# enqueue.lua's commonest call on its own: one new session of one queued run (create.lua)
CREATE = Contract(
    "create",
    # enqueue.lua's, but for one session, one queue and one run
    keys=(
        *GLOBAL_KEYS,
        "sessions",
        "rq_queues",
        "idle_workers",
        "workers",
        "epoch",
        *CREATE_SESSION,
        *ENQUEUE_QUEUE,
        "job",
    ),  # fmt: skip
    args=(
        *CLOCK_ARGS,
        ("fresh_ms", NUMBER),
        ("sid", TEXT),
        ("id", TEXT),
        ("name", TEXT),
        ("queue", TEXT),
        ("record", TEXT),
        ("job", TEXT),
        ("retention", TEXT),
    ),  # fmt: skip
    builders=("worker_runs", "worker_inbox", "rq_worker", "worker_handed"),
)

CONTROL = Contract(
    "control",
    keys=(
        *GLOBAL_KEYS,
        "schedule",
        "waiting",
        *SESSION_KEYS,
        "tasks",
        "task_names",
        "task_keys",
    ),  # fmt: skip
    key_blocks=(Block("run", RUN_BLOCK, ("nruns",)),),
    args=(*CLOCK_ARGS, ("op", TEXT), ("sid", TEXT), ("nruns", NUMBER), ("plan", TEXT)),
    extra_keys=True,
    builders=("job", *QUEUEING),  # (job: settle reads every run of the session)
)

# One run's keys in a destroy: a subset of RUN_BLOCK (its queue's line and the session's own
# list for that queue: the session leaves them)
DESTROY_RUN = ("job", "started", "finished", "failed", "queue", "squeue")

DESTROY = Contract(
    "destroy",
    keys=(
        *GLOBAL_KEYS,
        "sessions",
        "names",
        "session",
        "history",
        "chan",
        "tasks",
        "task_names",
        "task_keys",
        "held",
        "running",
        "objects",
        "state",
        "logs",
        "kind_index",
        "owner_index",
        "schedule",
        "waiting",
        "throttled",
    ),  # fmt: skip
    key_blocks=(Block("run", DESTROY_RUN, ("nruns",)),),
    args=(
        *CLOCK_ARGS,
        ("sid", TEXT),
        ("names_field", TEXT),
        ("history_ttl", NUMBER),
        ("ended_only", NUMBER),
        ("nruns", NUMBER),
    ),  # fmt: skip
    arg_blocks=(Block("run", ("id",), ("nruns",)),),
    flags=RUNS_WHEN_FULL,
)

RECOVER = Contract(
    "recover",
    keys=(
        *GLOBAL_KEYS,
        "workers",
        "rq_workers",
        "runs",
        "rq_worker",
        "inbox",
        "idle_workers",
        "handed",
        "schedule",
    ),  # fmt: skip
    key_blocks=(Block("run", RUN_BLOCK, ("nruns",)),),
    args=(
        *CLOCK_ARGS,
        ("reason", TEXT),
        ("unregister", NUMBER),
        ("stale_ms", NUMBER),
        ("charged", NUMBER),
        ("seen", NUMBER),
        ("current", TEXT),
        ("nruns", NUMBER),
    ),  # fmt: skip
    arg_blocks=(Block("run", ("id", "sid"), ("nruns",)),),
    builders=QUEUEING,
    flags=RUNS_WHEN_FULL,
)

# Children of another partition listed with their parents (link.lua, SPEC §9)
LINK = Contract(
    "link",
    keys=(),
    key_blocks=(Block("parent", ("job",), ("nlinks",)),),
    args=(("nlinks", NUMBER),),
    arg_blocks=(Block("link", ("child",), ("nlinks",)),),
)

# Task ids for runs added to a session later; never handed out twice (reserve.lua)
RESERVE = Contract("reserve", keys=("session", "epoch"), args=(("count", NUMBER),))

RECOUNT = Contract("recount", keys=("counters", "sessions"), args=(), builders=("session",))

# A worker's heartbeat, stamped with Redis's clock (TIME), and the reaper's decision
HEARTBEAT = Contract(
    "heartbeat",
    keys=("workers", "rq_worker", "steady"),
    args=(
        ("worker", TEXT),
        ("now_iso", TEXT),
        ("late_ms", NUMBER),
        ("keep_ms", NUMBER),
        ("expire_s", NUMBER),
        ("vouch", NUMBER),
        ("ncounts", NUMBER),
    ),  # fmt: skip
    arg_blocks=(Block("count", ("name", "n"), ("ncounts",)),),
    flags=RUNS_WHEN_FULL,
)

REAP = Contract(
    "reap",
    keys=("workers", "steady", "lock"),
    args=(
        ("worker", TEXT),
        ("ttl_ms", NUMBER),
        ("steady_ms", NUMBER),
        ("late_ms", NUMBER),
        ("lock_ms", NUMBER),
    ),  # fmt: skip
    flags=RUNS_WHEN_FULL,
)

# The event scripts: one session's channel, record and history
EVENT_KEYS = ("chan_all", "session", "history", "chan")
EVENT_ARGS = (("now_ms", NUMBER), ("cap", NUMBER), ("worker", TEXT), ("sid", TEXT))

EMIT = Contract(
    "emit",
    keys=EVENT_KEYS,
    args=(*EVENT_ARGS, ("nevents", NUMBER)),
    arg_blocks=(Block("event", ("type", "task", "data"), ("nevents",)),),
)

LOG = Contract(
    "log",
    keys=(*EVENT_KEYS, "logs"),
    args=(*EVENT_ARGS, ("task", TEXT), ("logs_cap", NUMBER), ("nlines", NUMBER)),
    arg_blocks=(Block("line", ("stream", "text"), ("nlines",)),),
)

STATE = Contract(
    "state",
    keys=(*EVENT_KEYS, "state"),
    args=(*EVENT_ARGS, ("task", TEXT), ("key", TEXT), ("op", TEXT), ("value", TEXT)),
)

REQUEST = Contract(
    "request",
    keys=(
        *GLOBAL_KEYS,
        "control_queue",
        "control_wake",
        "op_job",
        "session",
        "history",
        "chan",
        "rq_queues",
    ),  # fmt: skip
    args=(
        *CLOCK_ARGS,
        ("sid", TEXT),
        ("status", TEXT),
        ("event", TEXT),
        ("op_id", TEXT),
        ("op", TEXT),
        ("nfields", NUMBER),
    ),  # fmt: skip
    arg_blocks=(Block("field", ("name", "value"), ("nfields",)),),
)

CONTRACTS = {c.name: c for c in (STEP, TOOK, ENQUEUE, CREATE, CONTROL, DESTROY, RECOVER, EMIT,
                                 LOG, STATE, REQUEST, RECOUNT, HEARTBEAT, REAP, RESERVE,
                                 LINK)}  # fmt: skip
