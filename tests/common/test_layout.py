"""The partitioned key layout (SPEC §9, Redis Cluster): one partition keeps today's key
names; with P partitions a session, everything of it and its partition's RQ keys share one
slot, the partitions spread evenly over the slots, a session id names its partition, and
the Lua key builders make the keys of the call's partition."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable

import pytest
from redis import Redis
from redis.crc import key_slot

from sessionq.common.errors import ConfigError
from sessionq.common.keys import Keys, Layout, run_id
from sessionq.common.rqcompat import rq_keys
from sessionq.common.scripts.base import key_builders
from sessionq.common.scripts.contract import Contract
from sessionq.common.settings import CLUSTER_PARTITIONS, ONE_SLOT_PREFIX, Settings

ARGS = ("ab12cd34ef56", "default")  # a session id, a queue/worker/name: what builders take


def _builders(keys: Keys) -> dict[str, Callable[..., str]]:
    """Every key and channel function of a Keys, by name."""
    return {name: getattr(keys, name) for name, _ in inspect.getmembers(Keys, inspect.isfunction)
            if not name.startswith("_")}  # fmt: skip


def _call(build: Callable[..., str]) -> str:
    return build(*ARGS[: len(inspect.signature(build).parameters)])


def test_one_partition_keeps_todays_key_names() -> None:
    layout = Layout("sq:", 1)
    today = Keys("sq:")
    for name, build in _builders(today).items():
        assert _call(getattr(layout.part(0), name)) == _call(build)
        assert _call(getattr(layout.glob, name)) == _call(build)
    assert not layout.partitioned and layout.partition_of(ARGS[0]) == 0
    sid = layout.new_session_id()
    assert len(sid) == 12 and int(sid, 16) >= 0
    assert Layout.of(Settings.from_env("redis://h:1/0", environ={})).count == 1


def test_partitions_put_a_session_with_its_rq_keys_in_one_slot_and_globals_in_another() -> None:
    layout = Layout("sq:", 64)
    rq = rq_keys("sq:")
    slots_of_partitions = set()
    for partition in range(layout.count):
        sid = layout.new_session_id(partition)
        assert layout.partition_of(sid) == partition
        assert layout.partition_of(run_id(sid, 7)) == partition
        keys = layout.of_session(sid)
        rq_part = rq.under(keys.prefix)
        made = [_call(b) for b in _builders(keys).values()]
        made += [rq_part.job(run_id(sid, 1)), rq_part.queue("q"), rq_part.started("q"),
                 rq_part.finished("q"), rq_part.failed("q"), rq_part.queues_set]  # fmt: skip
        slots = {key_slot(key.encode()) for key in made}
        assert len(slots) == 1, made
        assert all("{" in key for key in made)
        slots_of_partitions |= slots
    assert len(slots_of_partitions) == layout.count
    globals_ = {key_slot(_call(b).encode()) for b in _builders(layout.glob).values()}
    assert len(globals_) == 1 and not globals_ & slots_of_partitions


@pytest.mark.parametrize("count", [16, 64, 256])
def test_partitions_spread_evenly_over_masters_holding_equal_slot_ranges(count: int) -> None:
    layout = Layout("sq:", count)
    thirds = [(0, 5460), (5461, 10922), (10923, 16383)]  # as redis-cli --cluster create does
    slots = [key_slot(k.session("x").encode()) for k in layout.parts()]
    held = Counter(next(i for i, (low, high) in enumerate(thirds) if low <= slot <= high)
                   for slot in slots)  # fmt: skip
    assert sorted(held) == [0, 1, 2]
    assert max(held.values()) - min(held.values()) <= 1


def test_new_sessions_spread_over_every_partition_and_names_have_one() -> None:
    layout = Layout("sq:", 16)
    seen = Counter(layout.partition_of(layout.new_session_id()) for _ in range(4000))
    assert sorted(seen) == list(range(16))
    assert min(seen.values()) > 4000 / 16 / 2
    named = layout.partition_of_name("alice", "nightly")
    assert named == layout.partition_of_name("alice", "nightly") and 0 <= named < 16
    assert layout.partition_of(layout.new_session_id(named)) == named


def test_the_partition_count_is_a_setting_and_one_slot_on_a_cluster_has_a_tagged_prefix() -> None:
    cluster = "redis+cluster://127.0.0.1:7000"
    spread = Settings.from_env(cluster, environ={})
    assert spread.partition_count == CLUSTER_PARTITIONS == 16 and spread.prefix == "sq:"
    one_slot = Settings.from_env(cluster, environ={"SESSIONQ_PARTITIONS": "1"})
    assert one_slot.partition_count == 1
    assert one_slot.prefix == ONE_SLOT_PREFIX == "{sq}:"
    with pytest.raises(ConfigError, match="prefix 'sq:': on a Redis Cluster .* needs a hash tag"):
        Settings.from_env(cluster, prefix="sq:", environ={"SESSIONQ_PARTITIONS": "1"})
    env = {"SESSIONQ_PARTITIONS": "8"}
    assert Settings.from_env(cluster, environ=env).partition_count == 8
    assert Settings.from_env(cluster, environ=env).prefix == "sq:"
    assert Settings.from_env("redis://h:1/0", environ=env).partition_count == 8
    assert Settings.from_env("redis://h:1/0", environ={}).prefix == "sq:"
    with pytest.raises(ConfigError, match=r"\(SESSIONQ_PARTITIONS\) must be a power of two"):
        Settings.from_env(cluster, environ={"SESSIONQ_PARTITIONS": "12"})
    with pytest.raises(ConfigError, match="prefix '{sq}:': no { } with partitions"):
        Settings.from_env(cluster, prefix="{sq}:", environ=env)
    assert Settings.from_env("redis://h:1/0", prefix="{sq}:", environ={}).partition_count == 1


PROBE = Contract(name="probe", keys=("first",), args=(), builders=(
    "session", "job", "wake", "worker_runs", "queue", "events_channel"))  # fmt: skip


def _probe(builders: dict[str, Callable[..., str]]) -> str:
    return PROBE.prologue(builders) + (
        "return {key_session(ARGV[1]), key_job(ARGV[2]), key_wake(ARGV[3]), "
        "key_worker_runs(ARGV[3]), key_queue(ARGV[3]), key_events_channel(ARGV[1])}"
    )


def test_lua_builders_make_the_keys_of_the_calls_partition(redis: Redis) -> None:
    rq = rq_keys("sq:")
    one = key_builders(Layout("sq:", 1), rq)
    assert "PFX" not in PROBE.prologue(one) and "'sq:session:'" in PROBE.prologue(one)
    layout = Layout("sq:", 64)
    probe = _probe(key_builders(layout, rq))
    for partition in (0, 17, 63):
        sid = layout.new_session_id(partition)
        keys = layout.part(partition)
        got = redis.eval(probe, 1, keys.session(sid), sid, run_id(sid, 3), "w1")
        part_rq = rq.under(keys.prefix)
        assert [g.decode() for g in got] == [
            keys.session(sid), part_rq.job(run_id(sid, 3)), keys.wake("w1"),
            keys.worker_runs("w1"), part_rq.queue("w1"), keys.events_channel(sid),
        ]  # fmt: skip
