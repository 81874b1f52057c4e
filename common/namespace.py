"""The partition count a namespace was made with, kept in Redis (keys.Layout.partitions_key,
SPEC §9): each process compares its own (SESSIONQ_PARTITIONS) with it at its first script call
and refuses to go on with another - a process of another count would see none of the
namespace's sessions and write its own where no worker of the namespace looks.

With one partition on one Redis (everyone's default) the record and the check travel with the
round trip the first script call makes anyway (scripts.base: the shebang probe); with several,
or on a Redis Cluster, they are calls of their own, once per process.
"""

from __future__ import annotations

from typing import Any

from sessionq.common.errors import ConfigError
from sessionq.common.keys import Keys, Layout


def queue_record(pipe: Any, layout: Layout) -> None:
    """Queue on `pipe` (a pipeline) the two commands whose replies `judge` reads: the count
    set unless one is, then the count kept."""
    pipe.set(layout.partitions_key(), layout.count, nx=True)
    pipe.get(layout.partitions_key())


def judge(layout: Layout, replies: list[Any]) -> None:
    """ConfigError naming SESSIONQ_PARTITIONS unless the count kept (the last of the replies
    of queue_record) is the layout's."""
    kept = replies[-1]
    if isinstance(kept, Exception):
        raise kept
    kept = int(kept) if kept is not None else layout.count
    if kept != layout.count:
        raise ConfigError(
            f"SESSIONQ_PARTITIONS={layout.count}, but the namespace {layout.prefix!r} was made "
            f"with {kept} partition(s): every process of a namespace uses the same count (see "
            "README, Scaling out)"
        )


def _one_partition_data(redis: Any, layout: Layout) -> bool:
    """Does the namespace hold keys of one partition (made before the count was kept)?"""
    one = Keys(layout.prefix)
    return any(redis.exists(key) for key in (one.run_counts(), one.sessions(), one.workers()))


def check(redis: Any, layout: Layout) -> None:
    """Keep the count if none is, and refuse another (calls of their own: see the module
    docstring). A partitioned process that finds no count kept but a namespace of one
    partition takes it as 1."""
    if layout.partitioned and redis.get(layout.partitions_key()) is None:
        if _one_partition_data(redis, layout):
            judge(layout, [b"1"])
    pipe = redis.pipeline(transaction=False)
    queue_record(pipe, layout)
    judge(layout, pipe.execute(raise_on_error=False))


async def check_async(redis: Any, layout: Layout) -> None:
    """check on redis.asyncio."""
    if layout.partitioned and await redis.get(layout.partitions_key()) is None:
        one = Keys(layout.prefix)
        for key in (one.run_counts(), one.sessions(), one.workers()):
            if await redis.exists(key):
                judge(layout, [b"1"])
    await redis.set(layout.partitions_key(), layout.count, nx=True)
    judge(layout, [await redis.get(layout.partitions_key())])
