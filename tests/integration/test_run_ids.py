"""Run ids are never handed out twice: a run written with a number past the session's id
counter (its reservation lost, as a failover to a lagging replica loses it) moves the counter
on, and a create()'s run counts as the session's first. The faults are real: a replica frozen
with SIGSTOP while its master hands out ids and then dies, and a master that restarts from a
snapshot older than the ids it handed out (reserve.lua's generation check)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.jobhash import build_run
from sessionq.common.keys import Keys, run_number
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from tests.conftest import FAST, wait_for


def test_a_reservation_lost_does_not_hand_out_a_written_id_again(
    client: Client, settings: Settings, redis: Redis
) -> None:
    s = client.session("lost-reservation")
    first = s.add(Task("tests.tasks:add", args=[1, 1], name="a"), flush=False)  # id reserved
    # the reservation is lost (the counter goes back, as on a replica that never had it),
    # then this handle writes its runs
    redis.hset(Keys(settings.prefix).session(s.id), "next", 0)
    s.flush()
    other = client.session("lost-reservation")  # another producer reserves fresh ids
    second = other.add(Task("tests.tasks:add", args=[2, 2], name="b"))
    assert second != first
    assert sorted(other.list_ids()) == sorted([first, second]), "both runs are there"


def test_add_runs_to_a_created_session_does_not_reuse_its_first_id(client: Client) -> None:
    [sid] = client.create("one", task="tests.tasks:add", args=[1, 2])
    [added] = client.add_runs(sid, [build_run(name="more", task="tests.tasks:add", args=[3])])
    assert added != f"{sid}-1"
    assert client.info(sid)[0]["tasks"]["queued"] == 2


def _client(server: RedisServer) -> Client:
    return Client(settings=Settings.from_env(server.url, environ={}, user="tester", **FAST))


def _adds(client: Client, names: list[str]) -> list[str]:
    """One add per name, each its own round trips (ids reserved one by one at first)."""
    s = client.session("ids")
    return [s.add(Task("tests.tasks:add", args=[1, 1], name=name)) for name in names]


def _in_sync(master: RedisServer, replica: RedisServer) -> None:
    """Wait until `replica` follows `master` and has everything it wrote."""
    link = Redis(port=replica.port)
    wait_for(lambda: link.info("replication").get("master_link_status") == "up",
             what="the replica to follow its master")  # fmt: skip
    link.close()
    wait_for(lambda: sync_reply(Redis(port=master.port).wait(1, 1000)) >= 1,
             what="the replica to catch up")  # fmt: skip


def _cut_off(master: RedisServer, replica: RedisServer) -> None:
    """The replica hears nothing more: frozen, and its link closed by the master (what the
    master would still send would otherwise wait in the frozen replica's socket)."""
    replica.pause()
    Redis(port=master.port).execute_command("CLIENT", "KILL", "TYPE", "replica")


@pytest.fixture
def lagging() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and its replica."""
    master = RedisServer().start()
    replica = RedisServer(replica_of=master).start()
    try:
        yield master, replica
    finally:
        replica.stop()
        master.stop()


def test_a_failover_to_a_lagging_replica_hands_out_no_id_again(
    lagging: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = lagging
    before = _client(master)
    kept = _adds(before, ["kept"])
    _in_sync(master, replica)
    _cut_off(master, replica)  # from here on the replica lags
    lost = _adds(before, [f"lost-{i}" for i in range(4)])  # acknowledged by the master only
    master.kill()
    before.close()
    replica.resume()
    Redis(port=replica.port).replicaof("NO", "ONE")  # promoted, as Sentinel would
    after = _client(replica)
    new = _adds(after, [f"new-{i}" for i in range(4)])
    assert not set(new) & set(lost), f"ids handed out again: {sorted(set(new) & set(lost))}"
    assert after.session("ids").list_ids() == [*kept, *new]
    after.close()


def test_two_generations_from_one_old_counter_hand_out_different_ids() -> None:
    """The master's data starts a new generation with nothing lost (its first replica
    attaching changes its replication id), so its next ids jump; the replica, frozen before
    them, is promoted and jumps from the same old counter: not to the same ids."""
    master = RedisServer().start()
    replica: RedisServer | None = None
    try:
        before = _client(master)
        kept = _adds(before, ["a", "b"])  # no replica yet
        replica = RedisServer(replica_of=master).start()
        _in_sync(master, replica)
        _cut_off(master, replica)
        lost = _adds(before, [f"lost-{i}" for i in range(3)])  # a new generation's jump, lost
        master.kill()
        before.close()
        replica.resume()
        Redis(port=replica.port).replicaof("NO", "ONE")
        after = _client(replica)
        new = _adds(after, [f"new-{i}" for i in range(3)])
        assert not set(new) & set(lost), f"ids handed out again: {sorted(set(new) & set(lost))}"
        assert after.session("ids").list_ids() == [*kept, *new]
        after.close()
    finally:
        for server in (replica, master):
            if server is not None:
                server.stop()


def test_a_restart_from_an_older_snapshot_hands_out_no_id_again() -> None:
    server = RedisServer().start()
    try:
        before = _client(server)
        kept = _adds(before, ["kept"])
        Redis(port=server.port).save()  # the snapshot the restart comes back with
        lost = _adds(before, [f"lost-{i}" for i in range(4)])
        before.close()
        server.kill()  # a crash: the writes after the snapshot are gone
        server.start()
        after = _client(server)
        assert after.session("ids").list_ids() == kept, "the snapshot's state came back"
        new = _adds(after, [f"new-{i}" for i in range(4)])
        assert not set(new) & set(lost), f"ids handed out again: {sorted(set(new) & set(lost))}"
        assert after.session("ids").list_ids() == [*kept, *new]
        after.close()
    finally:
        server.stop()


def test_ids_stay_consecutive_while_the_server_stays_the_same(client: Client) -> None:
    first, second = _adds(client, ["a", "b"])
    assert run_number(second) == run_number(first) + 1
