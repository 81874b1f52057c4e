"""Run ids are never handed out twice: a run written with a number past the session's id
counter (its reservation lost, as a failover to a lagging replica loses it) moves the counter
on, and a create()'s run counts as the session's first."""

from __future__ import annotations

from redis import Redis

from sessionq.common.jobhash import build_run
from sessionq.common.keys import Keys
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task


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
