"""Retention (SPEC §9, issue 18): an ended session made by create() is removed, with everything
under it, SESSIONQ_RETENTION_S after it ends - by the workers' scheduler - and at once by
`prune`; a persistent session only with SessionConfig(retention_s=...); a session that runs
again is no longer due."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from click.testing import CliRunner
from redis import Redis

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.errors import ConfigError, ValidationError
from sessionq.common.keys import Keys
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status
from sessionq.producer import Client, SessionConfig, Task
from sessionq.producer.cli import cli
from sessionq.worker.loop import SessionWorker
from sessionq.worker.schedule import Scheduler
from tests.conftest import WorkerProcs, ended, wait_for

NOOP = "tests.tasks:noop"
SHORT_S = 1.0


@pytest.fixture
def short(settings: Settings) -> Settings:
    """The test settings with a retention of about a second."""
    return replace(settings, retention_s=SHORT_S)


@pytest.fixture
def quick(short: Settings) -> Iterator[Client]:
    c = Client(settings=short)
    yield c
    c.close()


def drain(settings: Settings) -> None:
    SessionWorker(settings).work(burst=True)


def traces(redis: Redis, keys: Keys, sid: str) -> list[str]:
    """Everything of session `sid` left in Redis: keys naming it, and it (or its runs) as a
    member of any set or zset, or a field or value of any hash."""
    mark = sid.encode()
    found = []
    for raw in redis.scan_iter("*"):
        key = raw.decode()
        if sid in key:
            found.append(key)
            continue
        kind = redis.type(key).decode()
        if kind == "set":
            members = list(redis.smembers(key))
        elif kind == "zset":
            members = list(redis.zrange(key, 0, -1))
        elif kind == "hash":
            members = [x for pair in redis.hgetall(key).items() for x in pair]
        else:
            continue
        found += [f"{key} holds {m!r}" for m in members if mark in m]
    return found


def counters(redis: Redis, keys: Keys) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in redis.hgetall(keys.run_counts()).items() if int(v)}


def due(redis: Redis, keys: Keys) -> dict[str, float]:
    pairs: list[Any] = sync_reply(redis.zrange(keys.retention(), 0, -1, withscores=True))
    return {member.decode(): float(score) for member, score in pairs}


def expired(scheduler: Scheduler, sid: str) -> bool:
    scheduler.expire_due()
    return not scheduler.scripts.redis.exists(scheduler.scripts.keys.session(sid))


def test_an_ended_session_is_due_its_retention_after_its_end(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    [sid] = client.create("week", task=NOOP)
    assert codec.text(redis.hget(keys.session(sid), "retention_ms")) == "604800000"  # the default
    assert due(redis, keys) == {}
    drain(settings)
    assert ended(client, sid)
    finished_ms = int(redis.hget(keys.session(sid), "finished_at") or 0)
    assert due(redis, keys) == {sid: finished_ms + settings.retention_s * 1000}
    assert Scheduler(Scripts(redis, settings), "pruner").expire_due() == []  # not yet


def test_a_finished_create_session_is_gone_after_its_retention(
    quick: Client, short: Settings, redis: Redis, keys: Keys
) -> None:
    [sid] = quick.create("brief", task=NOOP)
    drain(short)
    assert ended(quick, sid) or quick.info(sid) == []
    scheduler = Scheduler(Scripts(redis, short), "pruner")
    wait_for(lambda: expired(scheduler, sid), what="the session's removal")
    assert traces(redis, keys, sid) == []  # keys, index entries, RQ job and registries, history
    assert counters(redis, keys) == {}
    assert due(redis, keys) == {}
    assert quick.info(sid) == []


def test_a_worker_removes_an_ended_session_by_itself(
    quick: Client, workers: WorkerProcs, redis: Redis, keys: Keys
) -> None:
    [sid] = quick.create("on-its-own", task=NOOP)
    workers.start()
    wait_for(lambda: ended(quick, sid), timeout=30, what="the session's end")
    wait_for(lambda: not traces(redis, keys, sid), timeout=30, what="the worker's removal")
    assert counters(redis, keys) == {}


def test_a_persistent_session_stays_unless_it_has_a_retention(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    kept = client.session("kept")
    kept.add(Task(NOOP))
    brief = client.session("brief", config=SessionConfig(retention_s=SHORT_S))
    brief.add(Task(NOOP))
    drain(settings)
    assert kept.wait(timeout=30) == "Completed"
    assert kept.id not in due(redis, keys)
    scheduler = Scheduler(Scripts(redis, settings), "pruner")
    wait_for(lambda: expired(scheduler, brief.id), what="the session's removal")
    assert traces(redis, keys, brief.id) == []  # its name too
    assert client.session("kept", create=False).id == kept.id
    assert client.info(kept.id)[0]["status"] == "Completed"


def test_a_retention_given_to_an_ended_persistent_session_makes_it_due(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    s = client.session("later")
    s.add(Task(NOOP))
    drain(settings)
    assert s.wait(timeout=30) == "Completed" and due(redis, keys) == {}
    client.session("later", config=SessionConfig(retention_s=SHORT_S))
    finished_ms = int(redis.hget(keys.session(s.id), "finished_at") or 0)
    assert due(redis, keys) == {s.id: finished_ms + SHORT_S * 1000}
    client.session("later", config=SessionConfig())  # and taken back
    assert due(redis, keys) == {}


def test_a_session_that_runs_again_is_not_removed(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    s = client.session("again", config=SessionConfig(retention_s=3600))
    s.add(Task(NOOP))
    drain(settings)
    assert s.wait(timeout=30) == "Completed" and list(due(redis, keys)) == [s.id]
    s.add(Task(NOOP, name="second"))  # runs it again
    assert client.info(s.id)[0]["status"] == "Running"
    assert due(redis, keys) == {}
    # even named by a stale due entry, a live session is left (the removal checks)
    assert Scripts(redis, settings).remove_ended([s.id]) == []
    assert client.info(s.id)[0]["status"] == "Running"
    drain(settings)
    assert s.wait(timeout=30) == "Completed" and list(due(redis, keys)) == [s.id]


def test_a_destroyed_session_is_no_longer_due(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    [sid] = client.create("destroyed", task=NOOP)
    drain(settings)
    assert list(due(redis, keys)) == [sid]
    client.destroy(sid)
    drain(settings)
    assert due(redis, keys) == {}


def test_prune_removes_only_the_callers_ended_sessions(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    [done] = client.create("done", task=NOOP)
    persistent = client.session("mine")
    persistent.add(Task(NOOP))
    other_client = Client(settings=replace(settings, user="other"))
    [others] = other_client.create("theirs", task=NOOP)
    drain(settings)
    [waiting] = client.create("waiting", task=NOOP)  # no worker: Pending
    assert client.prune(older_than=3600) == []  # none ended an hour ago
    assert client.prune() == [done]
    assert traces(redis, keys, done) == []
    assert client.info(waiting)[0]["status"] == Status.PENDING
    assert client.info(persistent.id)[0]["status"] == Status.COMPLETED
    assert other_client.info(others)[0]["status"] == Status.COMPLETED
    assert client.prune(view="all") == [others]
    assert traces(redis, keys, others) == []
    assert counters(redis, keys) == {"queued": 1, "succeeded": 1}  # waiting's, persistent's
    other_client.close()


def test_the_prune_command(client: Client, settings: Settings, redis: Redis, keys: Keys) -> None:
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, ["--url", settings.url, "--user", settings.user, *args])
        return result.exit_code, result.stdout

    [mine] = client.create("mine", task=NOOP)
    other_client = Client(settings=replace(settings, user="other"))
    [others] = other_client.create("theirs", task=NOOP)
    other_client.close()
    drain(settings)
    assert run("prune", "--older-than", "3600", "--json") == (0, "[]\n")
    code, out = run("prune")
    assert (code, out.split()) == (0, [mine])
    code, out = run("prune", "--all", "--json")
    assert (code, json.loads(out)) == (0, [others])
    assert traces(redis, keys, mine) == [] and traces(redis, keys, others) == []
    assert run("prune", "--older-than", "-1")[0] == 2


def test_a_stopped_session_is_due_too(
    client: Client, settings: Settings, redis: Redis, keys: Keys
) -> None:
    [sid] = client.create("stopped", task=NOOP)
    client.stop(sid)
    assert client.info(sid)[0]["status"] == Status.STOPPED
    assert list(due(redis, keys)) == [sid]
    drain(settings)  # carries the stop out: its queued run canceled
    assert counters(redis, keys) == {"canceled": 1}
    assert client.prune() == [sid]
    assert traces(redis, keys, sid) == [] and counters(redis, keys) == {}


@pytest.mark.parametrize("bad", [0, -1, float("inf"), True, "60"])
def test_a_bad_retention_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(ValidationError, match="retention_s"):
        SessionConfig(retention_s=bad)  # the wrong types on purpose


@pytest.mark.parametrize("bad", [-1, float("inf"), True, "60"])
def test_a_bad_older_than_is_refused_naming_it(client: Client, bad: object) -> None:
    with pytest.raises(ValidationError, match="older_than"):
        client.prune(older_than=bad)  # the wrong types on purpose
    with pytest.raises(ValidationError, match="view"):
        client.prune(view="everyone")


def test_sessionq_retention_s_is_read_from_the_environment() -> None:
    assert Settings.from_env(environ={"SESSIONQ_RETENTION_S": "90"}).retention_s == 90.0
    assert Settings.from_env(environ={}).retention_s == 604800.0
    with pytest.raises(ConfigError, match="retention_s"):
        Settings.from_env(environ={"SESSIONQ_RETENTION_S": "0"})
