"""Session.map / starmap (SPEC §9 "Fan-out"): one run per item, ids in input order, no name
clash under any task_pre_exist, one EVALSHA per flush. No worker: the runs stay queued."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.errors import ValidationError, ValidationTypeError
from sessionq.common.jobhash import parse_job_data, parse_meta
from sessionq.common.keys import Keys
from sessionq.common.rqcompat import rq_keys
from sessionq.common.scripts import transport
from sessionq.common.settings import Settings
from sessionq.producer import Client, SessionConfig, Task

ADD = "tests.tasks:add"
NOOP = "tests.tasks:noop"


def job_args(redis: Redis, settings: Settings, tid: str) -> tuple[list[Any], dict[str, Any]]:
    raw = redis.hget(rq_keys(settings.prefix).job(tid), "data")
    _func, args, kwargs = parse_job_data(raw)
    return args, kwargs


@pytest.fixture
def logged(redis: Redis) -> Iterator[Redis]:
    """The test's server, logging every command it runs (SLOWLOG, threshold 0) while the
    test runs; watch_calls starts the log afresh."""
    before = sync_reply(redis.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    redis.config_set("slowlog-log-slower-than", 0)
    yield redis
    redis.config_set("slowlog-log-slower-than", before)
    redis.slowlog_reset()


def watch_calls(redis: Redis) -> None:
    """The calls logged from here on (see `logged`)."""
    redis.slowlog_reset()


def enqueue_calls(redis: Redis, client: Client) -> int:
    """The calls of the enqueue script (the one that writes runs) since watch_calls."""
    enqueue = client.scripts.script("enqueue")
    called = [[codec.text(a) for a in e["command"].split()[:2]]
              for e in sync_reply(redis.slowlog_get(1000))]  # fmt: skip
    return called.count([transport.verb(enqueue), transport.handle(enqueue)])


def test_map_adds_one_run_per_item_with_ids_in_input_order(
    client: Client, redis: Redis, settings: Settings
) -> None:
    s = client.session("fan")
    items = [5, "x", [1, 2], {"k": None}, 0]
    ids = s.map(ADD, items, kwargs={"b": 10})
    assert len(ids) == len(set(ids)) == len(items)
    assert s.list_ids() == ids
    for tid, item in zip(ids, items, strict=True):
        assert job_args(redis, settings, tid) == ([item], {"b": 10})
    assert s.list_names() == ["add"] * len(items)


def test_starmap_takes_each_item_as_the_positional_arguments(
    client: Client, redis: Redis, settings: Settings
) -> None:
    s = client.session("star")
    rows = [(1, 2), [3, 4], (), ("a",)]
    ids = s.starmap(ADD, rows)
    assert s.list_ids() == ids
    assert [job_args(redis, settings, t)[0] for t in ids] == [list(r) for r in rows]


def test_the_decorated_function_is_taken_as_its_registered_name(
    client: Client, redis: Redis, settings: Settings
) -> None:
    from tests.tasks import echo

    ids = client.session("decorated").map(echo, [1])
    raw = redis.hget(rq_keys(settings.prefix).job(ids[0]), "data")
    assert parse_job_data(raw)[0] == "tests.tasks:echo"


def test_ten_thousand_mapped_runs_are_all_added_under_raise(client: Client) -> None:
    s = client.session("many")  # task_pre_exist="raise", the default
    assert s.config.task_pre_exist == "raise"
    named = s.add(Task(ADD, args=[1, 2]))  # takes the name "add" in the session
    ids = s.map(ADD, range(10_000))
    assert len(ids) == 10_000 and len(s) == 10_001
    assert s.list_ids() == [named, *ids]
    more = s.map(ADD, range(3))  # the same function again: no clash either
    assert len(s) == 10_004 and s.list_ids()[-3:] == more
    with pytest.raises(ValidationError, match="^name: "):
        s.add(Task(ADD, args=[3, 4]))  # the named task's rule is unchanged


@pytest.mark.parametrize("policy", ["raise", "replace", "ignore", "rename"])
def test_no_name_clash_whatever_task_pre_exist_says(client: Client, policy: str) -> None:
    s = client.session(f"policy-{policy}", config=SessionConfig(task_pre_exist=policy))
    first = s.add(Task(NOOP))
    ids = s.map(NOOP, [None, None]) + s.starmap(NOOP, [(), ()])
    assert len(set(ids)) == 4
    assert s.list_ids() == [first, *ids]  # nothing replaced, ignored or renamed
    assert s.list_names() == ["noop"] * 5


def test_use_instance_naming_names_mapped_runs_by_their_ids(
    client: Client, redis: Redis, settings: Settings
) -> None:
    s = client.session("inst", config=SessionConfig(use_instance_naming=True))
    ids = s.map(NOOP, [1, 2])
    assert s.list_names() == ids
    sq = redis.hget(rq_keys(settings.prefix).job(ids[1]), "sq")
    assert parse_meta(sq)["name"] == ids[1]


def test_one_evalsha_per_flush(client: Client, logged: Redis) -> None:
    redis = logged
    s = client.session("trips")
    s.map(NOOP, [1])  # scripts loaded, the first ids reserved
    watch_calls(redis)
    s.map(ADD, range(500), kwargs={"b": 1})
    assert enqueue_calls(redis, client) == 1

    watch_calls(redis)
    a = s.map(ADD, range(100), flush=False)
    b = s.add(Task(ADD, args=[1, 2], name="named"), flush=False)
    c = s.starmap(ADD, [(1, 2)] * 100, flush=False)
    assert enqueue_calls(redis, client) == 0
    s.flush()
    assert enqueue_calls(redis, client) == 1
    assert s.list_ids()[-201:] == [*a, b, *c]


def test_a_refused_item_names_its_index_and_nothing_is_staged(client: Client) -> None:
    s = client.session("refused")
    with pytest.raises(ValidationTypeError, match=r"^iterable\[2\]: "):
        s.map(ADD, [1, 2, object()], flush=False)
    with pytest.raises(ValidationTypeError, match=r"^iterable\[1\]: "):
        s.starmap(ADD, [(1, 2), 3], flush=False)
    with pytest.raises(ValidationError, match=r"^iterable\[0\]: "):
        s.map(ADD, ["x" * 600_000], flush=False)
    with pytest.raises(ValidationTypeError, match="^task: "):
        s.map(Task(ADD), [1])
    with pytest.raises(ValidationError, match="^task: "):
        s.map("not a function name", [1])
    with pytest.raises(ValidationTypeError, match="^iterable: "):
        s.map(ADD, 5)
    with pytest.raises(ValidationTypeError, match="^kwargs: "):
        s.map(ADD, [1], kwargs=[("b", 1)])
    with pytest.raises(ValidationTypeError, match="^flush: "):
        s.map(ADD, [1], flush=1)
    s.flush()
    assert len(s) == 0
    assert s.map(ADD, []) == [] and s.map(ADD, iter(())) == []


def test_mapped_runs_share_one_set_of_job_fields(
    client: Client, redis: Redis, settings: Settings
) -> None:
    s = client.session("shared")
    ids = s.map(NOOP, range(3))
    job = rq_keys(settings.prefix).job
    times = {redis.hget(job(t), "enqueued_at") for t in ids}
    assert len(times) == 1 and None not in times
    assert {codec.text(redis.hget(job(t), "state")) for t in ids} == {"queued"}
    assert redis.hlen(Keys(settings.prefix).session_names(s.id)) == 0


def test_staged_adds_keep_their_own_job_fields_beside_mapped_runs(
    client: Client, redis: Redis, settings: Settings
) -> None:
    s = client.session("fields")
    slow = s.add(Task(ADD, args=[1, 2], name="slow", retries=2, retry_delay=5, timeout=30),
                 flush=False)  # fmt: skip
    plain = s.map(ADD, [1], flush=False)[0]
    s.flush()
    job = rq_keys(settings.prefix).job
    assert redis.hmget(job(slow), "retries_left", "retry_delay_ms", "timeout") == [
        b"2", b"5000", b"30",
    ]  # fmt: skip
    assert redis.hmget(job(plain), "retries_left", "retry_delay_ms", "timeout") == [None] * 3


def test_adds_staged_without_a_round_trip_keep_add_rules(
    client: Client, redis: Redis, settings: Settings
) -> None:
    s = client.session("staged")
    s.add(Task(NOOP, name="warm"))  # ids reserved
    t = Task(ADD, args=[1, 2], name="same")
    first = s.add(t, flush=False)
    assert s.add(t, flush=False) == first  # the same object: the same id, staged once
    with pytest.raises(ValidationError, match="^args: "):
        s.add(Task(ADD, args=["x" * 600_000], name="huge"), flush=False)
    plain = s.add(Task(NOOP), flush=False)  # unnamed: named as its function
    s.add(Task(NOOP, name="same"), flush=False)  # a second "same" under "raise"
    with pytest.raises(ValidationError, match="same"):
        s.flush()
    assert len(s) == 1  # nothing of the refused flush was written
    ids = [s.add(t, flush=False), s.add(Task(NOOP), flush=False)]
    s.flush()
    assert s.add(t, flush=False) == ids[0] and ids[0] != first  # (a new flush, a new id)
    job = rq_keys(settings.prefix).job
    assert [parse_meta(redis.hget(job(i), "sq"))["name"] for i in ids] == ["same", "noop"]
    assert s.list_names() == ["warm", "same", "noop"] and plain not in s


def test_a_flush_takes_a_parent_added_before_in_it_and_names_each_queued_event(
    client: Client,
) -> None:
    s = client.session("parents")
    first, parent = Task(NOOP, name="head"), Task(NOOP, name="tail")
    child = Task(NOOP, name="child", depends_on=parent)
    ids = [s.add(t, flush=False) for t in (first, parent, child)]
    s.flush()
    assert s.list_ids() == ids
    assert states(s) == {"head": "queued", "tail": "queued", "child": "deferred"}
    queued = [e for e in client.events(s.id) or [] if e["type"] == "task.queued"]
    assert [(e["task"], e["data"]["name"], e["data"]["state"]) for e in queued] == [
        (ids[0], "head", "queued"), (ids[1], "tail", "queued"), (ids[2], "child", "deferred"),
    ]  # fmt: skip


def states(session: Any) -> dict[str, str]:
    return {r["name"]: r["state"] for r in session}


@pytest.mark.parametrize("silence", [True, False])
def test_plain_runs_staged_together_keep_their_own_fields(
    client: Client, redis: Redis, settings: Settings, silence: bool
) -> None:
    s = client.session(f"alike-{silence}", config=SessionConfig(silence_cond_check=silence))
    ids = [
        s.add(Task(NOOP, name="p1"), flush=False),
        s.add(Task(NOOP, name="keyed", key="k-1"), flush=False),
        s.add(Task(NOOP, name="p2"), flush=False),
    ]
    s.flush()
    job = rq_keys(settings.prefix).job
    silent = b"1" if silence else None
    assert [redis.hmget(job(t), "key", "cond_silent") for t in ids] == [
        [None, silent], [b"k-1", silent], [None, silent],
    ]  # fmt: skip
    assert s.add(Task(NOOP, name="other", key="k-1")) == ids[1]
    assert s.list_names() == ["p1", "keyed", "p2"]
