"""One namespace in several partitions on one Redis (SESSIONQ_PARTITIONS, keys.Layout, SPEC
§9): new sessions spread over the partitions, each session's keys in its own; reads see them
all; a worker drains the runs of every partition; listeners hear every partition's sessions.
(The §2-§5 suites run partitioned too: SESSIONQ_TEST_TARGET=partitions.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

import tests.tasks  # noqa: F401 - registers the @task functions (in-process workers)
from sessionq.common import codec
from sessionq.common.errors import ConfigError, PartlyWritten, ValidationError
from sessionq.common.keys import CONTROL_QUEUE, DEFAULT_QUEUE, Layout
from sessionq.common.redisserver import RedisServer
from sessionq.common.rqcompat import rq_home, rq_keys
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.producer import AsyncClient, Client, Session, Task, links
from sessionq.worker.loop import SessionWorker
from sessionq.worker.ops import recover_worker
from sessionq.worker.partitioned import worker_class
from sessionq.worker.schedule import Scheduler
from tests.conftest import ROOT, WorkerProcs, home_url, subscribers, wait_for

PARTITIONS = 4


@pytest.fixture
def pclient(settings: Settings) -> Iterator[Client]:
    """A client of the namespace in PARTITIONS partitions (whatever the target)."""
    with Client(settings=replace(settings, partitions=PARTITIONS)) as client:
        yield client


@pytest.fixture
def spread(pclient: Client) -> Settings:
    return pclient.settings


@pytest.fixture
def pworkers(spread: Settings, redis: Redis) -> Iterator[WorkerProcs]:
    """Workers of that namespace (SESSIONQ_PARTITIONS in their environment)."""
    procs = WorkerProcs(spread, redis)
    yield procs
    procs.stop_all()


# the workers' sweep of the runs waiting on dependencies (worker.schedule) never comes within
# a test: a waiting run goes on only when it is told that its parent ended
NO_SWEEP = {"SESSIONQ_SCHEDULER_INTERVAL_S": "600"}


def start(procs: WorkerProcs, n: int = 1, env: dict[str, str] | None = None) -> None:
    procs.start(n, env={"SESSIONQ_PARTITIONS": str(PARTITIONS), **(env or {})})


def test_new_sessions_spread_over_the_partitions_each_in_its_own(
    pclient: Client, spread: Settings, redis: Redis
) -> None:
    layout = Layout.of(spread)
    ids = pclient.create("spread", task="tests.tasks:noop", replicas=40)
    by_partition = Counter(layout.partition_of(sid) for sid in ids)
    assert len(by_partition) > 1, "every session landed in one partition"
    for n, count in by_partition.items():
        part = layout.part(n)
        assert redis.hlen(part.sessions()) == count
        assert redis.scard(part.idx_status("Pending")) == count
    assert not redis.exists(Layout(spread.prefix).glob.sessions()), "no one-partition names"
    assert sorted(r["id"] for r in pclient.info(ids)) == sorted(ids)
    assert sorted(r["id"] for r in pclient.fetch()) == sorted(ids)
    stats = pclient.stats()
    assert stats["sessions"]["Pending"] == 40 and stats["queues"]["default"] == 40


def test_a_worker_drains_the_runs_of_every_partition(
    pclient: Client, spread: Settings, redis: Redis, pworkers: WorkerProcs
) -> None:
    layout = Layout.of(spread)
    ids = pclient.create("drain", task="tests.tasks:noop", replicas=30)
    s = pclient.session("many")  # a persistent session: its name's partition
    assert layout.partition_of(s.id) == layout.partition_of_name(spread.user, "many")
    s.map("tests.tasks:echo", range(20))
    start(pworkers)
    wait_for(lambda: all(r["status"] == "Completed" for r in pclient.info([*ids, s.id])),
             timeout=60, what="every session to complete")  # fmt: skip
    used = {layout.partition_of(sid) for sid in [*ids, s.id]}
    done = {n for n in range(PARTITIONS)
            if int(redis.hget(layout.part(n).run_counts(), "succeeded") or 0) > 0}  # fmt: skip
    assert done == used and len(done) > 1
    assert pclient.stats()["tasks"]["succeeded"] == 50


def test_control_and_destroy_reach_a_session_in_any_partition(
    pclient: Client, pworkers: WorkerProcs, spread: Settings
) -> None:
    layout = Layout.of(spread)
    sessions = [pclient.session(f"ctl-{i}") for i in range(8)]
    assert len({layout.partition_of(s.id) for s in sessions}) > 1
    for s in sessions:
        s.pause()
        s.add(Task("tests.tasks:noop", name="held"))
    start(pworkers)
    for s in sessions:
        s.play()
        assert s.wait(timeout=30) == "Completed"
    accepted = pclient.destroy([s.id for s in sessions])
    assert all(accepted.values())
    wait_for(lambda: pclient.info([s.id for s in sessions]) == [], what="the destroys")


def test_listening_to_every_session_hears_every_partition(
    pclient: Client, pworkers: WorkerProcs, spread: Settings
) -> None:
    start(pworkers)
    heard: list[dict[str, Any]] = []
    listening = threading.Thread(
        target=lambda: heard.extend(pclient.listen(None, types=["session.completed"], timeout=4))
    )
    listening.start()
    channels = [part.events_all_channel() for part in Layout.of(spread).parts()]
    wait_for(lambda: all(subscribers(pclient.redis, c) == 1 for c in channels),
             what="the listener to subscribe to every partition")  # fmt: skip
    ids = pclient.create("heard", task="tests.tasks:noop", replicas=12)
    listening.join(timeout=60)
    assert {e["session"] for e in heard} == set(ids)
    assert len({Layout.of(spread).partition_of(sid) for sid in ids}) > 1


def test_a_create_that_fails_midway_names_the_sessions_it_wrote(
    pclient: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    send = pclient._script_call

    def second_fails(step: Any) -> Any:  # the second partition's call is refused
        calls.append(step)
        if len(calls) == 2:
            raise ResponseError("refused")
        return send(step)

    monkeypatch.setattr(pclient, "_script_call", second_fails)
    with pytest.raises(PartlyWritten, match="refused") as caught:
        pclient.create("partly", task="tests.tasks:noop", replicas=40)
    monkeypatch.undo()
    written = caught.value.ids
    assert 0 < len(written) < 40
    assert sorted(r["id"] for r in pclient.fetch()) == sorted(written)


def test_a_plain_session_worker_refuses_a_partitioned_namespace_by_name(spread: Settings) -> None:
    with pytest.raises(ConfigError, match="worker_class"):
        SessionWorker(spread)
    assert worker_class(spread).partitioned


def elsewhere_name(settings: Settings, sid: str, name: str) -> str:
    """The name `name`-<n> of a persistent session of another partition than session `sid`'s."""
    layout = Layout.of(settings)
    home = layout.partition_of(sid)
    return next(f"{name}-{i}" for i in range(100)
                if layout.partition_of_name(settings.user, f"{name}-{i}") != home)  # fmt: skip


def elsewhere(client: Client, settings: Settings, sid: str, name: str) -> Session:
    """A persistent session of another partition than session `sid`'s (elsewhere_name)."""
    return client.session(elsewhere_name(settings, sid, name))


def test_a_run_waits_on_a_run_of_another_partition(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    parents = pclient.session("xp-parents")
    pid = parents.add(Task("tests.tasks:noop", name="parent"))
    s = elsewhere(pclient, spread, parents.id, "xp-children")
    after = s.add(Task("tests.tasks:noop", name="after", depends_on=pid))
    unless = s.add(Task("tests.tasks:noop", name="unless", depends_on=pid, run_if="failed"))
    assert s[after]["state"] == s[unless]["state"] == "deferred"
    start(pworkers, env=NO_SWEEP)  # the parent's end is told to its children by its worker
    assert s.wait(timeout=60) == "Completed"
    parent = parents[pid]
    assert parent["state"] == "succeeded"
    assert s[after]["state"] == "succeeded" and s[after]["started_at"] >= parent["finished_at"]
    assert s[unless]["state"] == "canceled"
    assert s[unless]["error"] == f"dependency {pid} succeeded (run_if=failed)"


def test_a_run_added_after_its_parent_of_another_partition_ended(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    parents = pclient.session("xp-ended")
    ok = parents.add(Task("tests.tasks:noop", name="ok"))
    bad = parents.add(Task("tests.tasks:boom", name="bad"))
    start(pworkers)
    assert parents.wait(timeout=60) == "Failed"
    s = elsewhere(pclient, spread, parents.id, "xp-late")
    never = s.add(Task("tests.tasks:noop", name="never", depends_on=[ok, bad]))
    assert s[never]["state"] == "canceled"  # judged as it was written
    assert s[never]["error"] == f"dependency {bad} failed (run_if=succeeded)"
    then = s.add(Task("tests.tasks:add", args=[2, 3], name="then", depends_on=[ok, bad],
                      run_if="finished"))  # fmt: skip
    assert s.wait(timeout=60) == "Completed"
    assert s[then]["state"] == "succeeded" and s[then]["result"] == 5


def test_a_parent_that_ends_before_its_child_is_linked_is_judged_by_the_add(
    pclient: Client, spread: Settings, pworkers: WorkerProcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent ends after the add read its state and before the add listed the child with
    it (its worker found no child to tell): the add judges the child itself."""
    parents = pclient.session("xp-race")
    pid = parents.add(Task("tests.tasks:noop", name="parent"))
    start(pworkers, env=NO_SWEEP)
    assert parents.wait(timeout=60) == "Completed"
    read = links.parent_states

    def before_it_ended(*args: Any) -> Any:  # (a plan: the states as read before the end)
        states = yield from read(*args)
        return dict.fromkeys(states, "started")

    monkeypatch.setattr(links, "parent_states", before_it_ended)
    s = elsewhere(pclient, spread, parents.id, "xp-raced")
    unless = Task("tests.tasks:noop", name="unless", depends_on=pid, run_if="failed")
    s.add(unless, flush=False)
    after = s.add(Task("tests.tasks:noop", name="after", depends_on=pid), flush=False)
    then = s.add(Task("tests.tasks:noop", name="then", depends_on=unless), flush=False)
    s.flush()
    assert s[unless.ids[s.id]]["state"] == "canceled"
    assert s[then]["state"] == "canceled"  # waited on a run of the same add that ended so
    assert s.wait(timeout=60) == "Completed" and s[after]["state"] == "succeeded"


def test_a_dependency_on_no_task_of_another_partition_is_refused(
    pclient: Client, spread: Settings
) -> None:
    layout = Layout.of(spread)
    parents = pclient.session("xp-none")
    pid = parents.add(Task("tests.tasks:noop", name="later", in_=3600))
    s = elsewhere(pclient, spread, parents.id, "xp-orphan")
    unknown = f"{parents.id}-999"  # a run id of that partition that names no task
    assert layout.partition_of(unknown) != layout.partition_of(s.id)
    with pytest.raises(ValidationError, match=f"depends_on.*{unknown}.*names no task"):
        s.add(Task("tests.tasks:noop", name="child", depends_on=[pid, unknown]))
    assert len(s) == 0
    assert s.add(Task("tests.tasks:noop", name="child", depends_on=pid)) in s


def test_a_lost_worker_is_charged_at_most_its_runs_in_flight_over_every_partition(
    pclient: Client, spread: Settings
) -> None:
    """Recovery is one call per partition: a worker lost with `--max-jobs 2` and a started
    run in each of three partitions has two of them charged (they used their one attempt),
    not one per partition; the third goes back unrun."""
    layout = Layout.of(spread)
    ids = pclient.create("lost", task="tests.tasks:noop", replicas=60)
    parts = sorted({layout.partition_of(sid) for sid in ids})[:3]
    assert len(parts) == 3
    scripts: Any = pclient.scripts  # (a PartitionedScripts: it steps as a worker would)
    head = scripts.worker_head("lost-worker", [CONTROL_QUEUE, DEFAULT_QUEUE])
    for n in parts:  # its RQ worker hash says --max-jobs 2 in every partition (register)
        pclient.redis.hset(scripts.parts[n].rq.worker("lost-worker"), "max_jobs", 2)
        scripts.claim_at = n
        scripts.step_send(head, "lost-worker", [], [], "", claim=1)
        assert len(scripts.step_receive().started) == 1
    assert pclient.stats()["tasks"]["started"] == 3

    assert recover_worker(scripts, "lost-worker", "lost in a test")
    tasks = pclient.stats()["tasks"]
    assert tasks["failed"] == 2, "charged: no retries left"
    assert tasks["queued"] == len(ids) - 2 and tasks["started"] == 0


def test_a_process_with_another_partition_count_is_refused_by_name(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    """The namespace keeps the count it was made with: a producer or a worker of another
    SESSIONQ_PARTITIONS stops with a ConfigError naming it (it would see none of the
    namespace's sessions), before it writes anything."""
    [sid] = pclient.create("first", task="tests.tasks:noop")
    counts = [2] if spread.clustered else [1, 2]  # (one partition on a cluster: a hash-tag prefix)
    for count in counts:
        other = replace(spread, partitions=count)
        with (
            Client(settings=other) as client,
            pytest.raises(ConfigError, match="SESSIONQ_PARTITIONS"),
        ):
            client.create("second", task="tests.tasks:noop")
        worker = worker_class(other)(other)
        with pytest.raises(ConfigError, match="SESSIONQ_PARTITIONS"):
            worker.register()
        worker.redis.close()
    proc = pworkers.start(wait=False, env={"SESSIONQ_PARTITIONS": "2"})
    assert proc.wait(timeout=60) == 1
    assert [r["id"] for r in pclient.fetch()] == [sid], "nothing written by the others"


def test_a_partitioned_process_refuses_a_namespace_of_one_partition(settings: Settings) -> None:
    """A namespace of one partition made before the count was kept (no count in Redis) counts
    as one: a partitioned process refuses it. On a Redis of its own, whatever the target (on
    a cluster one partition has a prefix of its own, a hash tag: there is no such namespace),
    and in a process of its own: RQ serves one prefix per process (rqcompat.load_rq), and on
    the cluster target this one serves the cluster's."""
    server = RedisServer().start()
    try:
        args = (server.url, settings.prefix, settings.user)
        body = f"import {__name__} as t; t.refuses_one_partition(*{args!r})"
        subprocess.run([sys.executable, "-c", body], check=True, cwd=ROOT, timeout=120)
    finally:
        server.stop()


def refuses_one_partition(url: str, prefix: str, user: str) -> None:
    """The body of the test above, run in its own process."""
    redis = Redis.from_url(url)
    one = Settings.from_env(url, environ={}, prefix=prefix, user=user, partitions=1)
    with Client(settings=one) as client:
        client.create("old", task="tests.tasks:noop")
    redis.delete(Layout.of(one).partitions_key())  # as a namespace made before it was kept
    with Client(settings=replace(one, partitions=PARTITIONS)) as client:
        with pytest.raises(ConfigError, match="SESSIONQ_PARTITIONS=4.* with 1 partition"):
            client.create("new", task="tests.tasks:noop")
        with pytest.raises(ConfigError, match="SESSIONQ_PARTITIONS"):
            client.session("mine")
    with Client(settings=one) as client:  # and one partition goes on as before
        assert len(client.create("again", task="tests.tasks:noop")) == 1


def test_a_refused_dependency_of_another_partition_keeps_the_flush_s_other_changes(
    pclient: Client, spread: Settings
) -> None:
    """As within one partition: the add is refused in the flush's transaction (enqueue.lua
    'nodep'), whose saved objects and drops are written."""
    parents = pclient.session("xp-kept")
    s = elsewhere(pclient, spread, parents.id, "xp-kept-objects")
    gone = s.add(Task("tests.tasks:noop", name="gone", in_=3600))
    oid = s.save({"a": 1}, flush=False)
    s.remove(gone, flush=False)
    with pytest.raises(ValidationError, match="depends_on.*names no task"):
        s.add(Task("tests.tasks:noop", name="orphan", depends_on=f"{parents.id}-999"))
    assert s.load(oid) == {"a": 1}
    assert gone not in s and len(s) == 0


def test_a_child_hears_a_parent_of_another_partition_end_again_once_restarted(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    """The child waits on a parent of another partition that had ended when it was added and
    on one of its own that had not: it is listed with both, so the end of the first,
    restarted after the second ended, is told to it (as within one partition)."""
    parents = pclient.session("xp-again")
    pid = parents.add(Task("tests.tasks:noop", name="parent"))
    parents.add(Task("tests.tasks:noop", name="later", in_=3600))  # (the session goes on)
    start(pworkers, env=NO_SWEEP)
    wait_for(lambda: parents[pid]["state"] == "succeeded", what="the parent to end")
    s = elsewhere(pclient, spread, parents.id, "xp-again-child")
    s.pause()
    own = s.add(Task("tests.tasks:noop", name="own"), flush=False)
    child = s.add(Task("tests.tasks:noop", name="child", depends_on=[pid, own]))
    assert s[child]["state"] == "deferred"
    parents.pause()
    parents.restart()  # the parent waits (held) until the child's own parent has ended
    wait_for(lambda: parents[pid]["state"] == "held", what="the parent restarted, held")
    s.play()
    wait_for(lambda: s[own]["state"] == "succeeded", what="the child's own parent to end")
    assert s[child]["state"] == "deferred"  # (the parent of another partition runs again)
    parents.play()
    assert s.wait(timeout=60) == "Completed" and s[child]["state"] == "succeeded"
    assert parents[pid]["attempts"] == 2


def test_a_link_that_fails_leaves_the_add_written_for_the_sweep(
    pclient: Client,
    spread: Settings,
    pworkers: WorkerProcs,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The parents' partition refuses the link (its master lost, say): the child is written,
    waiting, so the add returns it (raising, it would be added again: twice), logs that it is
    not linked, and the workers' sweep judges it."""
    parents = pclient.session("xp-unlinked")
    pid = parents.add(Task("tests.tasks:noop", name="parent"))
    s = elsewhere(pclient, spread, parents.id, "xp-unlinked-child")
    call = pclient.scripts.call

    def unreachable(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "link":
            raise RedisConnectionError("the parents' master is unreachable")
        return call(name, *args, **kwargs)

    monkeypatch.setattr(pclient.scripts, "call", unreachable)
    oid = s.save({"b": 2}, flush=False)
    child = s.add(Task("tests.tasks:noop", name="child", depends_on=pid))
    assert s[child]["state"] == "deferred" and s.load(oid) == {"b": 2}
    assert any(child in r.getMessage() and "not linked" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    monkeypatch.undo()
    start(pworkers)  # (the sweep on)
    assert parents.wait(timeout=60) == "Completed"
    assert s.wait(timeout=60) == "Completed" and s[child]["state"] == "succeeded"


def test_an_async_add_whose_link_fails_is_written_too(
    pclient: Client, spread: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    parents = pclient.session("xp-aio-unlinked")
    pid = parents.add(Task("tests.tasks:noop", name="parent"))
    name = elsewhere_name(spread, parents.id, "xp-aio-unlinked-child")

    async def main() -> str:
        async with AsyncClient(settings=spread) as aclient:
            call = aclient.scripts.call_async

            async def unreachable(redis: Any, name: str, *args: Any) -> Any:
                if name == "link":
                    raise RedisConnectionError("the parents' master is unreachable")
                return await call(redis, name, *args)

            monkeypatch.setattr(aclient.scripts, "call_async", unreachable)
            s = await aclient.session(name)
            return await s.add(Task("tests.tasks:noop", name="child", depends_on=pid))

    child = asyncio.run(main())
    assert pclient.session(name)[child]["state"] == "deferred"


def test_a_partition_s_scheduler_judges_with_the_namespace_s_scripts(
    spread: Settings, redis: Redis
) -> None:
    """A run of its partition may wait on runs of others, read under their own prefixes."""
    whole = Scripts(redis, spread)
    with pytest.raises(ValueError, match="whole="):
        Scheduler(whole.parts[1], "tester")
    assert Scheduler(whole.parts[1], "tester", whole).whole is whole


def test_an_async_session_waits_on_a_run_of_another_partition(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    parents = pclient.session("xp-aio")
    pid = parents.add(Task("tests.tasks:noop", name="parent"))
    name = elsewhere_name(spread, parents.id, "xp-aio-child")

    async def main() -> tuple[str, str]:
        async with AsyncClient(settings=spread) as aclient:
            s = await aclient.session(name)
            with pytest.raises(ValidationError, match="depends_on"):
                await s.add(Task("tests.tasks:noop", name="orphan", depends_on=f"{pid}9"))
            child = await s.add(Task("tests.tasks:noop", name="child", depends_on=pid))
            await asyncio.to_thread(start, pworkers, 1, NO_SWEEP)
            return child, await s.wait(60)

    child, status = asyncio.run(main())
    assert status == "Completed" and pclient.session(name)[child]["state"] == "succeeded"


def test_retries_and_restarts_across_partitions_as_within_one(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    parents = pclient.session("xp-retry")
    retried = parents.add(Task("tests.tasks:fails_before", args=[2], name="retried", retries=1))
    once = parents.add(Task("tests.tasks:fails_before", args=[2], name="once"))
    s = elsewhere(pclient, spread, parents.id, "xp-rejudged")
    # judged on its parent's last attempt, not on the failed one retried
    kept = s.add(Task("tests.tasks:noop", name="kept", depends_on=retried))
    later = s.add(Task("tests.tasks:noop", name="later", depends_on=once))
    start(pworkers)
    assert parents.wait(timeout=60) == "Failed"
    wait_for(lambda: s.progress()["status"] == "Completed", what="the children judged")
    assert parents[retried]["attempts"] == 2 and s[kept]["state"] == "succeeded"
    assert s[later]["state"] == "canceled"
    parents.restart(failed_only=True)  # `once` succeeds on its second attempt
    wait_for(lambda: parents[once]["state"] == "succeeded", what="the parent's second attempt")
    s.restart(failed_only=True)  # the run canceled by its parent's failure is judged again
    wait_for(lambda: s[later]["state"] == "succeeded", what="the child judged again")
    assert s.wait(timeout=60) == "Completed" and s[kept]["attempts"] == 1


def test_a_worker_lost_between_a_parent_s_end_and_telling_its_children(
    pclient: Client, spread: Settings, pworkers: WorkerProcs
) -> None:
    """The worker that ends the parent is killed (SIGKILL) right after the end is written,
    before it judges the child of another partition: the workers' sweep does (its
    supervisor's new process, here)."""
    parents = pclient.session("xp-lost")
    pid = parents.add(Task("tests.silent_end:die_before_telling", name="parent"))
    s = elsewhere(pclient, spread, parents.id, "xp-told")
    child = s.add(Task("tests.tasks:noop", name="child", depends_on=pid))
    pworkers.start(1, extra=["--import", "tests.silent_end"],
                   env={"SESSIONQ_PARTITIONS": str(PARTITIONS)})  # fmt: skip
    assert parents.wait(timeout=60) == "Completed"
    lost = parents[pid]["worker"]
    wait_for(lambda: lost not in pworkers.names(), what="the worker that ended it to be lost")
    assert s.wait(timeout=60) == "Completed"
    assert s[child]["state"] == "succeeded" and s[child]["worker"] != lost


def test_rq_suspend_pauses_a_partitioned_worker_s_claims_until_rq_resume(
    pclient: Client, spread: Settings, redis: Redis
) -> None:
    """`rq suspend` sets RQ's key outside the partitions (rq_home): a partitioned worker reads
    it before it claims. A burst worker leaves at once; a waiting one says it is suspended,
    claims nothing in any partition, and drains them all after `rq resume`."""
    home = rq_keys(rq_home(spread))
    url = home_url(redis, home.suspended)  # (on a cluster: the master of RQ's key)

    def rq_cli(command: str) -> None:
        env = {**os.environ, "RQ_KEY_PREFIX": f"{rq_home(spread)}rq", "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, "-m", "rq.cli", command, "-u", url], env=env, cwd=ROOT,
                       check=True, capture_output=True, timeout=60)  # fmt: skip

    rq_cli("suspend")
    layout = Layout.of(spread)
    ids = pclient.create("suspended", task="tests.tasks:noop", replicas=12)
    assert len({layout.partition_of(sid) for sid in ids}) > 1
    worker_class(spread)(spread).work(burst=True)  # leaves at once, as RQ's burst workers do
    assert {r["status"] for r in pclient.info(ids)} == {"Pending"}
    worker = worker_class(spread)(spread)
    thread = threading.Thread(target=worker.work, daemon=True)  # waits, not burst
    thread.start()
    try:
        wait_for(lambda: codec.text(redis.hget(home.worker(worker.name), "state")) == "suspended",
                 what="the worker to say it is suspended")  # fmt: skip
        assert {r["status"] for r in pclient.info(ids)} == {"Pending"}
        rq_cli("resume")
        wait_for(lambda: {r["status"] for r in pclient.info(ids)} == {"Completed"},
                 timeout=60, what="every partition's runs after rq resume")  # fmt: skip
    finally:
        worker.shutting_down = True
        thread.join(timeout=30)
