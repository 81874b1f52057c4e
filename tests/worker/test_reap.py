"""The reaper's decision, on Redis's clock (heartbeat.lua, reap.lua, recover.lua's
`stale_ms`): a heartbeat counts when it lands, a reaper judges others only once its own
heartbeats have landed steadily for the time asked, and a worker that beat again after the
reaper judged it is left alone."""

from __future__ import annotations

import dataclasses

from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.keys import Keys
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.worker.ops import recover_worker
from tests.conftest import wait_for


def redis_ms(redis: Redis) -> int:
    seconds, micros = sync_reply(redis.time())
    return int(seconds) * 1000 + int(micros) // 1000


def quick(settings: Settings) -> Settings:
    return dataclasses.replace(settings, heartbeat_interval_s=0.05, heartbeat_ttl_s=0.3)


def test_a_heartbeat_is_stamped_with_redis_s_clock(redis: Redis, settings: Settings) -> None:
    scripts = Scripts(redis, settings)
    before = redis_ms(redis)
    now, since = scripts.heartbeat("w1")
    assert before <= now <= redis_ms(redis) and since == now
    assert redis.zscore(Keys(settings.prefix).workers(), "w1") == now
    assert scripts.heartbeat("w1")[1] == since, "on time: still steady since the first"


def test_a_reaper_judges_only_after_its_own_steady_heartbeats(
    redis: Redis, settings: Settings
) -> None:
    s = quick(settings)
    scripts, ttl_ms = Scripts(redis, s), int(s.heartbeat_ttl_s * 1000)
    scripts.heartbeat("other")
    scripts.heartbeat("me")
    steady_s = s.heartbeat_ttl_s

    def judged() -> list[str]:
        return scripts.reap_candidates("me", steady_s=steady_s, lock_s=0.001)

    # not steady for long enough yet: nobody, though "other" goes stale meanwhile
    first = redis_ms(redis)
    while redis_ms(redis) - first < ttl_ms // 2:
        scripts.heartbeat("me")
        assert judged() == []

    def steady_and_stale() -> list[str]:
        scripts.heartbeat("me")
        return judged()

    assert wait_for(steady_and_stale, what="the reaper to judge") == ["other"]

    # its own heartbeats held up (Redis frozen for everyone): it judges nobody, neither while
    # its last heartbeat is late nor once a late one has landed
    beat = redis_ms(redis)
    wait_for(lambda: redis_ms(redis) - beat > s.heartbeat_late_s * 1000, what="a late beat")
    assert judged() == []
    scripts.heartbeat("me")
    assert judged() == []


def test_a_worker_that_beat_again_is_not_recovered(redis: Redis, settings: Settings) -> None:
    s = quick(settings)
    scripts, k = Scripts(redis, s), Keys(s.prefix)
    scripts.heartbeat("w")
    redis.rpush(k.worker_runs("w"), "nosuchsession-1")
    assert not recover_worker(scripts, "w", "lost", stale_ms=int(s.heartbeat_ttl_s * 1000))
    assert redis.lrange(k.worker_runs("w"), 0, -1) == [b"nosuchsession-1"], "left alone"
    assert redis.zscore(k.workers(), "w") is not None
    stamped = redis_ms(redis)
    wait_for(lambda: redis_ms(redis) - stamped > s.heartbeat_ttl_s * 1000, what="a stale beat")
    assert recover_worker(scripts, "w", "lost", stale_ms=int(s.heartbeat_ttl_s * 1000))
    assert redis.zscore(k.workers(), "w") is None


def test_a_vouch_never_brings_back_a_worker_that_left(redis: Redis, settings: Settings) -> None:
    scripts, k = Scripts(redis, settings), Keys(settings.prefix)
    assert scripts.heartbeat("gone", vouch=True) == [0, 0]
    assert redis.zscore(k.workers(), "gone") is None
    scripts.heartbeat("here")
    assert scripts.heartbeat("here", vouch=True)[0] > 0
