"""Two tenants on one Redis, each an ACL user limited to its own prefix (SPEC §1): each can do
everything through sessionq with its prefix, and nothing with the other's.

RQ fixes its key prefix per process, so everything under `a:` or `b:` runs in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.exceptions import NoPermissionError

from sessionq.common.keys import Keys
from sessionq.common.redisserver import RedisServer
from sessionq.common.settings import Settings
from tests.conftest import ROOT, WorkerProcs, wait_for

# The ACL rules of one tenant, as the README gives them: its keys and channels, the command
# categories sessionq and RQ use, and nothing that reaches past the prefix (dangerous and
# admin commands, SCAN/RANDOMKEY/DBSIZE and PUBSUB listings, flushing scripts or functions,
# calling functions, debugging scripts - which freezes the server - and other databases).
TENANT_RULES = (
    "-@all +@read +@write +@scripting +@pubsub +@connection +@transaction -@dangerous "
    "-scan -randomkey -pubsub -script|flush -script|kill -script|debug -function -fcall "
    "-fcall_ro -select -move -swapdb -dbsize -client|tracking +time"
)

FLOW = """
import json, sys
from sessionq.producer import Client
client = Client(sys.argv[1], prefix="a:", user="alice")
ids = client.create("mine", task="tests.tasks:add", args=[1, 2], replicas=2)
events = list(client.listen(ids, after=0, timeout=60))
records = client.info(ids)
out = {
    "terminal": sorted(e["type"] for e in events if e["type"].startswith("session.")
                       and e["type"] != "session.created" and e["type"] != "session.started"),
    "results": [r["result"] for r in records],
    "fetched": len(client.fetch()),
    "completed": client.stats()["sessions"]["Completed"],
    "logs": sorted(client.logs(ids)),
    "kept": len(client.events(ids)),
    "destroyed": client.destroy(ids),
    "ids": ids,
}
from sessionq.producer import Task
with client.session("kept") as s:  # persistent: dependencies, a schedule, pause and play
    first = Task("tests.tasks:add", args=[1, 1], name="first")
    s.add(Task("tests.tasks:add", args=[2, 2], name="then", depends_on=first))
    s.add(Task("tests.tasks:add", args=[3, 3], name="later", in_=0.2))
    s.pause()
    s.play()
    out["persistent"] = [s.wait(timeout=60), len(s)]
    s.destroy()
print(json.dumps(out))
"""


def test_the_readme_gives_these_rules() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"resetkeys ~a:* resetchannels &a:* {TENANT_RULES}\n" in readme


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    """Its own server: the users it gets must not outlive the test on a shared one."""
    server = RedisServer().start()
    try:
        admin = Redis(port=server.port)
        for user, prefix in (("alice", "a:"), ("bob", "b:")):
            rules = f"on >{user}-pw resetkeys ~{prefix}* resetchannels &{prefix}* {TENANT_RULES}"
            admin.execute_command("ACL", "SETUSER", user, *rules.split())
        admin.close()
        yield server
    finally:
        server.stop()


def url_of(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{user}-pw@127.0.0.1:{server.port}/0"


def sessionq(url: str, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RQ_KEY_PREFIX", None)
    cmd = [sys.executable, "-m", "sessionq", "--url", url, "--prefix", prefix, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_a_tenant_does_everything_in_its_prefix_and_nothing_in_another(
    acl_server: RedisServer,
) -> None:
    alice, bob = url_of(acl_server, "alice"), url_of(acl_server, "bob")
    admin = Redis(port=acl_server.port)
    try:
        made = sessionq(bob, "b:", "--user", "bob", "create", "bobs", "--task", "m:f")
        assert made.returncode == 0, made.stderr
        theirs = made.stdout.strip()

        # alice, through her own prefix: create, run on her worker, listen, read, destroy
        workers = WorkerProcs(Settings.from_env(alice, prefix="a:", environ={}), admin)
        try:
            workers.start(1)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            env.pop("RQ_KEY_PREFIX", None)
            flow = subprocess.run([sys.executable, "-c", FLOW, alice], capture_output=True,
                                  text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
            assert flow.returncode == 0, flow.stderr
            out = json.loads(flow.stdout)
            assert out["terminal"] == ["session.completed"] * 2
            assert out["results"] == [3, 3] and out["fetched"] == 2 and out["completed"] == 2
            assert out["logs"] == sorted(out["ids"]) and out["kept"] > 0
            assert out["destroyed"] == {sid: True for sid in out["ids"]}
            assert out["persistent"] == ["Completed", 3]
            keys = Keys("a:")
            wait_for(lambda: not admin.hlen(keys.sessions()), what="her worker to destroy them")
        finally:
            workers.stop_all()

        # alice with bob's prefix: refused, one line, exit 1; bob's session untouched
        before = admin.hgetall(Keys("b:").session(theirs))
        for args in (["info", theirs], ["ls"], ["destroy", theirs], ["events", theirs, "-f"],
                     ["create", "x", "--task", "m:f"], ["worker", "--burst"]):  # fmt: skip
            refused = sessionq(alice, "b:", *args)
            assert refused.returncode == 1, (args, refused.stderr)
            assert refused.stderr.count("\n") == 1, (args, refused.stderr)
            assert "refused access" in refused.stderr and "Traceback" not in refused.stderr
            assert "alice-pw" not in refused.stderr, "the password is never shown"
        assert admin.hgetall(Keys("b:").session(theirs)) == before
        for args in (["ls"], ["events", theirs, "-f"]):  # a wrong password: said at once
            wrong = sessionq(alice.replace("alice-pw", "s3cret-x"), "a:", *args)
            assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1, wrong.stderr
            assert "username-password" in wrong.stderr and "s3cret-x" not in wrong.stderr
        assert admin.hexists(Keys("b:").sessions(), theirs)

        # and what no prefix rule covers: listing or flushing what is not hers
        for command in (["SCAN", "0"], ["KEYS", "*"], ["PUBSUB", "CHANNELS"], ["FLUSHALL"],
                        ["SCRIPT", "FLUSH"], ["CONFIG", "GET", "*"], ["INFO"],
                        ["SCRIPT", "DEBUG", "SYNC"], ["SCRIPT", "DEBUG", "YES"], ["SELECT", "1"],
                        ["MOVE", "a:mine", "1"], ["SWAPDB", "0", "1"], ["DBSIZE"],
                        ["FCALL", "f", "0"], ["FCALL_RO", "f", "0"], ["FUNCTION", "LIST"],
                        ["FUNCTION", "FLUSH"]):  # fmt: skip
            with Redis.from_url(alice) as r, pytest.raises(NoPermissionError):
                r.execute_command(*command)
        assert admin.ping(), "nothing froze the server"
    finally:
        admin.close()
