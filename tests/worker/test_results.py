"""A function's return value that cannot be stored (msgpack cannot encode it, or it is over
SESSIONQ_RESULT_MAX_BYTES) fails its run only: the body ran, so it is no failure before the
run began, which would stop the whole session."""

from __future__ import annotations

import pytest

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.errors import ConfigError
from sessionq.common.settings import Settings
from sessionq.producer import Client, Session, Task
from sessionq.worker.loop import SessionWorker

MIB = 1024 * 1024


def drain(settings: Settings) -> None:
    SessionWorker(settings).work(burst=True)


def states(session: Session) -> dict[str, tuple[str, str | None]]:
    return {t["name"]: (t["state"], t["error"]) for t in session}


def test_an_unencodable_result_fails_its_task_not_the_session(
    client: Client, settings: Settings
) -> None:
    s = client.session("unstorable")  # default config: a failure before a body stops it
    s.add(Task("tests.tasks:unencodable", name="bad"))
    for i in range(3):
        s.add(Task("tests.tasks:add", args=[i, 1], name=f"ok{i}"))
    drain(settings)
    st = states(s)
    assert st["bad"][0] == "failed"
    assert "return value of tests.tasks:unencodable cannot be stored" in (st["bad"][1] or "")
    assert "cannot encode" in (st["bad"][1] or "")
    assert [st[f"ok{i}"][0] for i in range(3)] == ["succeeded"] * 3
    failed = [e for e in client.events(s.id) or [] if e["type"] == "task.failed"]
    assert len(failed) == 1
    assert not [e for e in client.events(s.id) or [] if e["type"] == "task.canceled"]


def test_a_result_over_the_cap_fails_the_run_with_the_sizes(
    client: Client, settings: Settings
) -> None:
    assert settings.result_max_bytes == MIB  # the documented default
    [big] = client.create("big", task="tests.tasks:blob", args=[2 * MIB])
    [fits] = client.create("fits", task="tests.tasks:blob", args=[MIB - 64])
    drain(settings)
    by_id = {r["id"]: r for r in client.info([big, fits])}
    assert by_id[big]["status"] == "Failed"
    size = 2 * MIB + 5  # msgpack's bin 32 header
    assert by_id[big]["error"] == (
        f"return value is {size} bytes, more than SESSIONQ_RESULT_MAX_BYTES={MIB}"
    )
    assert by_id[big]["result"] is None
    assert by_id[fits]["status"] == "Completed" and len(by_id[fits]["result"]) == MIB - 64


def test_the_cap_is_a_setting(client: Client, settings: Settings, redis_url: str) -> None:
    small = Settings.from_env(
        redis_url, environ={"SESSIONQ_RESULT_MAX_BYTES": "100"}, user=settings.user
    )
    assert small.result_max_bytes == 100
    [sid] = client.create("small", task="tests.tasks:blob", args=[200])
    drain(small)
    [record] = client.info(sid)
    assert record["status"] == "Failed"
    assert record["error"] == "return value is 202 bytes, more than SESSIONQ_RESULT_MAX_BYTES=100"
    for bad in ("0", "-1", "1MiB"):
        with pytest.raises(ConfigError, match="(?i)result_max_bytes"):
            Settings.from_env(redis_url, environ={"SESSIONQ_RESULT_MAX_BYTES": bad})
