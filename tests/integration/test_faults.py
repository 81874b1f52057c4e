"""A busy, full, read-only Redis, and a worker whose watcher dies: each fault caused for real
on a redis-server the test starts itself (SPEC §9, issue 17)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import ResponseError

from sessionq.common.connection import sync_reply
from sessionq.common.errors import RedisFull, RedisUnavailable
from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from sessionq.producer import Client, Task
from tests.conftest import ENV_KNOBS, FAST, ROOT, ended, wait_for

pytestmark = pytest.mark.timeout(240)
BUSY_SCRIPT = "while true do end"


class Fixture:
    """A throwaway Redis, a client on it, and `sessionq worker` processes whose log is kept."""

    def __init__(self, tmp_path: Path) -> None:
        self.server = RedisServer().start()
        self.settings = Settings.from_env(self.server.url, environ={}, user="tester",
                                          retry_budget_s=5, **FAST)  # fmt: skip
        self.client = Client(settings=self.settings)
        self.redis = Redis.from_url(self.server.url)
        self.keys = Keys(self.settings.prefix)
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sessionq", "--url", self.settings.url, "--prefix",
                self.settings.prefix, "--user", self.settings.user, *args]  # fmt: skip

    def start_worker(self, *imports: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"worker{len(self.procs)}.log"
        cmd = self.cli("worker", "--import", "tests.tasks")
        for module in imports:
            cmd += ["--import", module]
        env = {**os.environ, **ENV_KNOBS, "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=out, start_new_session=True)
        self.procs.append(proc)
        wait_for(lambda: self.names(), what="a worker")
        return proc, log

    def names(self) -> list[str]:
        return [n.decode() for n in self.redis.zrange(self.keys.workers(), 0, -1)]

    def beat_ms(self, name: str) -> float:
        return float(self.redis.zscore(self.keys.workers(), name) or 0)

    def now_ms(self) -> int:
        seconds, micros = sync_reply(self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.client.close()
        self.redis.close()
        self.server.stop()


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.close()


def logged(log: Path, *needles: str) -> bool:
    text = log.read_text(errors="replace")
    return all(n in text for n in needles)


def started_once(client: Client, ids: list[str]) -> None:
    for sid in ids:
        starts = [e for e in client.events(sid) or [] if e["type"] == "task.started"]
        assert len(starts) == 1, f"{sid}: its run began exactly once"


def completed(client: Client, ids: list[str]) -> bool:
    return all(r["status"] == "Completed" for r in client.info(ids))


def test_a_tenants_busy_script_does_not_stop_a_worker(fx: Fixture) -> None:
    proc, log = fx.start_worker()
    [name] = fx.names()
    ids = fx.client.create("drain", task="tests.tasks:sleeper", args=[0.1], replicas=40)
    scheduled = fx.client.session("scheduled")
    later = scheduled.add(Task("tests.tasks:noop", name="later", in_=0.5))
    wait_for(lambda: sum(r["status"] == "Completed" for r in fx.client.info(ids)) >= 2,
             what="the drain to be under way")  # fmt: skip

    tenant = BusyTenant(fx.server.url).start()  # another tenant's slow script
    # both threads of the worker met BUSY and backed off, once per episode
    wait_for(lambda: logged(log, f"watcher {name}: Redis says try later (BUSY",
                            f"worker {name}: Redis says try later (BUSY"),
             timeout=60, what="the worker to meet BUSY")  # fmt: skip
    tenant.kill()
    assert tenant.outcome and "killed" in str(tenant.outcome[0]).lower(), tenant.outcome

    killed_at = fx.now_ms()
    wait_for(lambda: fx.beat_ms(name) > killed_at, what="a heartbeat after the busy script")
    wait_for(lambda: completed(fx.client, ids), timeout=90, what="every run to complete")
    started_once(fx.client, ids)
    wait_for(lambda: scheduled[later]["state"] == "succeeded", what="the scheduled run")

    [sid] = fx.client.create("long", task="tests.tasks:sleeper", args=[60])
    wait_for(lambda: fx.client.info(sid)[0]["status"] == "Running", what="the long run")
    fx.client.destroy(sid)
    wait_for(lambda: not fx.client.info(sid), what="the destroy to complete")

    assert proc.poll() is None and fx.names() == [name], "the same worker process carried on"
    text = log.read_text(errors="replace")
    assert text.count(f"watcher {name}: Redis says try later") == 1, "logged once per episode"
    assert "Traceback" not in text


def test_a_full_redis_holds_the_worker_and_refuses_the_producer_clearly(fx: Fixture) -> None:
    proc, log = fx.start_worker()
    [name] = fx.names()
    ids = fx.client.create("drain", task="tests.tasks:sleeper", args=[0.1], replicas=30)
    wait_for(lambda: sum(r["status"] == "Completed" for r in fx.client.info(ids)) >= 2,
             what="the drain to be under way")  # fmt: skip

    used = int(sync_reply(fx.redis.info("memory"))["used_memory"])
    fx.redis.config_set("maxmemory", used // 2)
    # its steps are refused whole (run.lua's shebang flags say it may write), its heartbeats
    # are not (heartbeat.lua's allow-oom): it stays alive and accounted for, not reaped
    wait_for(lambda: logged(log, f"worker {name}: Redis says try later (OOM"),
             timeout=60, what="the worker to meet OOM")  # fmt: skip
    full_at = fx.now_ms()
    wait_for(lambda: fx.beat_ms(name) > full_at, what="a heartbeat while Redis is full")

    with pytest.raises(RedisFull, match="Redis is full: .* uses .* of its maxmemory"):
        fx.client.create("refused", task="tests.tasks:add", args=[1, 2])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = subprocess.run(fx.cli("create", "refused", "--task", "tests.tasks:add", "--args", "1 2"),
                         cwd=ROOT, env=env, capture_output=True, timeout=60)  # fmt: skip
    assert cli.returncode == 1
    lines = cli.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Redis is full" in lines[0], lines

    assert proc.poll() is None, "the worker process is alive"
    fx.redis.config_set("maxmemory", 0)
    lifted_at = fx.now_ms()
    wait_for(lambda: fx.beat_ms(name) > lifted_at, what="its watcher to heartbeat again")
    wait_for(lambda: completed(fx.client, ids), timeout=90, what="every run to complete")
    started_once(fx.client, ids)
    assert not fx.client.fetch(view="all", status="Failed")
    assert proc.poll() is None and fx.names() == [name], "the same worker process carried on"


def test_a_demoted_master_does_not_kill_a_worker(fx: Fixture) -> None:
    proc, log = fx.start_worker()
    [name] = fx.names()
    ids = fx.client.create("drain", task="tests.tasks:sleeper", args=[0.1], replicas=30)
    wait_for(lambda: sum(r["status"] == "Completed" for r in fx.client.info(ids)) >= 2,
             what="the drain to be under way")  # fmt: skip
    # a master that refuses to sync: our server turns replica (READONLY) but keeps its data,
    # as a demoted master that has not synced yet
    refuse_sync = ["--user", *"default on nopass ~* &* +@all -sync -psync".split()]
    with RedisServer(extra=refuse_sync) as master:
        fx.redis.replicaof("127.0.0.1", master.port)
        wait_for(lambda: logged(log, f"watcher {name}: Redis says try later (READONLY"),
                 timeout=60, what="the worker to meet READONLY")  # fmt: skip
        fx.redis.replicaof("NO", "ONE")
    promoted_at = fx.now_ms()
    wait_for(lambda: fx.beat_ms(name) > promoted_at, what="a heartbeat on the new master")
    wait_for(lambda: completed(fx.client, ids), timeout=90, what="every run to complete")
    started_once(fx.client, ids)
    assert proc.poll() is None and fx.names() == [name], "the same worker process carried on"


def test_a_worker_whose_watcher_dies_is_replaced(fx: Fixture) -> None:
    proc, log = fx.start_worker("tests.faulty")
    [name] = fx.names()
    [broken] = fx.client.create("breaks", task="tests.faulty:break_heartbeat")
    # the process exits (not half-alive): its supervisor gives back its runs and replaces it
    wait_for(lambda: logged(log, f"worker {name}: its watcher thread ended", "exited with 71"),
             timeout=60, what="the worker process to exit")  # fmt: skip
    wait_for(lambda: fx.names() and name not in fx.names(), what="a new worker process")
    assert logged(log, "RuntimeError: heartbeat broken on purpose")
    wait_for(lambda: ended(fx.client, broken), what="the breaking session to end")
    [sid] = fx.client.create("after", task="tests.tasks:add", args=[2, 3])
    wait_for(lambda: completed(fx.client, [sid]), what="the new worker to take runs")
    assert proc.poll() is None, "the supervisor carried on"


def test_an_evicting_policy_is_warned_about_at_start(fx: Fixture) -> None:
    fx.redis.config_set("maxmemory-policy", "allkeys-lru")
    _, log = fx.start_worker()
    assert logged(log, "maxmemory-policy is allkeys-lru", "evict")


class BusyTenant:
    """Another tenant's Lua busy loop on the server, until kill()."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tenant = Redis.from_url(url, socket_timeout=300)
        self.outcome: list[ResponseError] = []
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        try:
            self.tenant.eval(BUSY_SCRIPT, 0)
        except ResponseError as exc:
            self.outcome.append(exc)

    def start(self) -> BusyTenant:
        probe = Redis.from_url(self.url)
        probe.config_set("busy-reply-threshold", 100)
        self.thread.start()

        def busy() -> bool:
            try:
                probe.ping()
            except ResponseError as exc:
                return str(exc).startswith("BUSY")
            return False

        wait_for(busy, what="Redis to answer BUSY")
        probe.close()
        return self

    def kill(self) -> None:
        killer = Redis.from_url(self.url)
        killer.script_kill()
        killer.close()
        self.thread.join(timeout=10)
        self.tenant.close()


def test_a_producer_rides_out_a_short_busy_script(
    fx: Fixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # its connection made and the scripts loaded before: a new connection would ride out BUSY
    # within the client's own retries, without a word
    fx.client.scripts.ensure_loaded()
    tenant = BusyTenant(fx.server.url).start()
    created: list[list[str]] = []
    producer = threading.Thread(
        target=lambda: created.append(fx.client.create("patient", task="tests.tasks:noop")),
        daemon=True,
    )
    producer.start()
    wait_for(lambda: "Redis says try later (BUSY" in caplog.text, what="the create to meet BUSY")
    tenant.kill()
    producer.join(timeout=30)
    assert created and len(created[0]) == 1, "the create went through within its retries"
    assert fx.client.info(created[0])[0]["status"] == "Pending"


def test_a_producer_gets_a_clear_error_from_a_long_busy_script(fx: Fixture) -> None:
    tenant = BusyTenant(fx.server.url).start()
    try:
        with pytest.raises(RedisUnavailable, match="not taking commands now: BUSY"):
            fx.client.create("impatient", task="tests.tasks:noop")
    finally:
        tenant.kill()
    assert tenant.outcome, "the tenant's script was killed"
