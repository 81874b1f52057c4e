"""sessionq.canfar (SPEC §9 "CANFAR, unchanged"): seed 002's examples, written as in the seed
with only the import line changed, answering what the seed says they return."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import webbrowser
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from sessionq.canfar import AsyncSession, Session
from sessionq.common.keys import Keys
from tests.conftest import WorkerProcs, wait_for

SECONDS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # '2222-12-14T02:24:06Z'
RECORD_KEYS = ["id", "userid", "image", "type", "status", "name", "startTime", "expiryTime",
               "connectURL", "requestedRAM", "requestedCPUCores", "requestedGPUCores",
               "coresInUse", "ramInUse"]  # fmt: skip
NO_WORKERS_STATS = {
    "cores": {
        "requestedCPUCores": 0,
        "coresAvailable": 0,
        "maxCores": {"cores": 0, "withRam": "0Gi"},
    },
    "ram": {"maxRAM": {"ram": "0Gi", "withCores": 0}},
}


@pytest.fixture(autouse=True)
def canfar_env(redis_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`Session()` finds the test Redis as Client does (SESSIONQ_URL), as user tester (the
    workers' settings); the sessionq logger's level (loglevel= sets it) is put back after."""
    monkeypatch.setenv("SESSIONQ_URL", redis_url)
    monkeypatch.setenv("SESSIONQ_USER", "tester")
    for var in ("REDIS_URL", "SESSIONQ_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    logger = logging.getLogger("sessionq")
    level = logger.level
    yield
    logger.setLevel(level)


def gone(session: Session, ids: list[str]) -> bool:
    return session.info(ids=ids) == []


def finished(session: Session, ids: list[str]) -> bool:
    """All ended; asserts they completed, else shows why not (Client's record has the error)."""
    records = session.info(ids=ids)
    if len(records) < len(ids) or any(r["status"] not in ("Completed", "Failed") for r in records):
        return False
    why = [(r["name"], r["error"]) for r in session.client.info(ids) if r["status"] != "Completed"]
    assert not why, why
    return True


def test_the_constructor_of_the_seed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionq.canfar")
    session = Session(
        timeout=120,
        concurrency=100,  # No effect on sync client
        loglevel=40,
    )
    assert logging.getLogger("sessionq").level == logging.ERROR
    pool = session.client.redis.connection_pool
    connection = pool.get_connection()
    assert connection.socket_timeout == 120  # timeout: the Redis socket timeout
    pool.release(connection)
    assert "concurrency has no effect on the sync client" in caplog.text
    caplog.clear()
    assert session.info(ids="hjko98yghj") == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "loglevel=40: quiet"
    session.close()


def test_options_a_canfar_script_may_pass(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sessionq.canfar")
    # CANFAR's url is its server; Redis is then found as Client finds it (SESSIONQ_URL)
    with Session(url="https://ws-uv.canfar.net/skaha", certificate="~/.ssl/cadcproxy.pem") as s:
        assert s.client.settings.url == redis_url
        assert s.stats() == NO_WORKERS_STATS
    assert "certificate has no meaning for sessionq: ignored" in caplog.text
    with Session(url=redis_url, loglevel="INFO") as s:
        assert s.client.settings.url == redis_url
    assert logging.getLogger("sessionq").level == logging.INFO
    for bad, field in (({"timeout": 0}, "timeout"), ({"loglevel": "LOUD"}, "loglevel"),
                       ({"concurrency": 0}, "concurrency")):  # fmt: skip
        with pytest.raises(ValueError, match=f"^{field}: "):
            Session(**bad)


def test_the_method_signatures_are_the_seeds() -> None:
    seed = {
        "fetch": ["kind", "status", "view"],
        "stats": [],
        "info": ["ids"],
        "logs": ["ids", "verbose"],
        "create": [
            "name",
            "image",
            "cores",
            "ram",
            "kind",
            "gpu",
            "cmd",
            "args",
            "env",
            "replicas",
        ],  # fmt: skip
        "events": ["ids", "verbose"],
        "destroy": ["ids"],
        "destroy_with": ["prefix"],
        "connect": ["ids"],
    }
    for cls in (Session, AsyncSession):
        for method, positional in seed.items():
            params = inspect.signature(getattr(cls, method)).parameters.values()
            names = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
            assert names == ["self", *positional], (cls.__name__, method)
            assert inspect.iscoroutinefunction(getattr(cls, method)) == (cls is AsyncSession)
    keywords = inspect.signature(Session.destroy_with).parameters
    assert keywords["kind"].default == "headless" and keywords["status"].default == "Completed"


def test_a_pending_session_has_the_seeds_record_shape() -> None:
    session = Session()
    [sid] = session.create(
        name="flexible", image="images.canfar.net/skaha/terminal:1.1.1", cmd="env"
    )
    [record] = session.info(ids=sid)
    assert list(record) == RECORD_KEYS
    assert record == {
        "id": sid, "userid": "tester", "image": "images.canfar.net/skaha/terminal:1.1.1",
        "type": "headless", "status": "Pending", "name": "flexible", "startTime": "<none>",
        "expiryTime": "<none>", "connectURL": "", "requestedRAM": "<none>",
        "requestedCPUCores": "<none>", "requestedGPUCores": "<none>", "coresInUse": "<none>",
        "ramInUse": "<none>",
    }  # fmt: skip
    assert session.fetch() == [record] and session.fetch(kind="notebook") == []
    assert session.fetch(status="Pending") == [record] and session.fetch(status="Running") == []
    assert session.stats() == NO_WORKERS_STATS
    session.close()


def test_fetch_stats_and_info_of_a_running_notebook(workers: WorkerProcs) -> None:
    workers.start(1, allow_commands=True, extra=["--cores", "4", "--ram", "16"])
    session = Session()
    [nb] = session.create(
        name="example-notebook", image="image-server/image/label:latest", cores=2, ram=16,
        kind="notebook", cmd="sleep", args="60",
    )  # fmt: skip
    wait_for(lambda: session.info(ids=nb)[0]["status"] == "Running", what="the notebook to run")

    found = session.fetch(kind="notebook")
    assert [list(r) for r in found] == [RECORD_KEYS]
    assert SECONDS_UTC.fullmatch(found[0]["startTime"])
    assert found == [
        {"id": nb, "userid": "tester", "image": "image-server/image/label:latest",
         "type": "notebook", "status": "Running", "name": "example-notebook",
         "startTime": found[0]["startTime"], "expiryTime": "<none>", "connectURL": "",
         "requestedRAM": "16G", "requestedCPUCores": "2", "requestedGPUCores": "<none>",
         "coresInUse": "<none>", "ramInUse": "<none>"}
    ]  # fmt: skip
    assert session.fetch(kind="headless") == []
    assert session.stats() == {
        "cores": {
            "requestedCPUCores": 2,
            "coresAvailable": 4,
            "maxCores": {"cores": 4, "withRam": "16Gi"},
        },
        "ram": {"maxRAM": {"ram": "16Gi", "withCores": 4}},
    }
    stats = session.client.stats()  # Client's own names for the largest worker
    assert stats["max_cores"] == {"cores": 4.0, "with_ram": 16.0}
    assert stats["max_ram"] == {"ram": 16.0, "with_cores": 4.0}
    assert session.info(ids=nb) == found
    assert session.info(ids=["hjko98yghj", nb]) == found  # an unknown id is left out

    assert session.destroy(id=nb) == {nb: True}
    wait_for(lambda: gone(session, [nb]), what="the notebook to be destroyed")
    session.close()


def test_create_logs_events_connect_and_destroy_with_as_in_the_seed(
    workers: WorkerProcs, capsys: pytest.CaptureFixture[str]
) -> None:
    workers.start(1, allow_commands=True)
    session = Session()
    ids = session.create(
        name="test",
        image="images.canfar.net/skaha/terminal:1.1.1",
        cores=2,
        ram=8,
        gpu=1,
        kind="headless",
        cmd="env",
        env={"TEST": "test"},
        replicas=2,
    )
    assert len(ids) == 2 and all(re.fullmatch(r"[0-9a-f]{12}", sid) for sid in ids)
    wait_for(lambda: finished(session, ids), what="both replicas to complete")

    records = session.info(ids=ids)
    assert [r["name"] for r in records] == ["test-1", "test-2"]
    for r in records:
        assert (r["requestedCPUCores"], r["requestedRAM"], r["requestedGPUCores"]) == (
            "2", "8G", "1",
        )  # fmt: skip
        assert r["type"] == "headless" and r["image"] == "images.canfar.net/skaha/terminal:1.1.1"

    logs = session.logs(id=ids)
    assert logs is not None and list(logs) == ids
    for n, sid in enumerate(ids, start=1):
        lines = logs[sid].splitlines()
        assert {"TEST=test", f"REPLICA_ID={n}", "REPLICA_COUNT=2"} <= set(lines)
    assert session.logs(id="hjko98yghj") == {}
    assert session.logs(ids[0], verbose=True) is None
    assert "TEST=test" in capsys.readouterr().out

    events = session.events(ids=ids[0])
    assert events is not None and [list(e) for e in events] == [[ids[0]]]
    lines = events[0][ids[0]].splitlines()
    assert "session.created" in lines[0] and "session.completed" in lines[-1]
    both = session.events(ids=[ids[0], "hjko98yghj", ids[1]])
    assert both is not None and [list(e) for e in both] == [[ids[0]], [ids[1]]]
    assert both[0] == events[0]
    assert session.events(ids=ids, verbose=True) is None
    assert "session.completed" in capsys.readouterr().out

    # no dashboard: connect follows the sessions in the terminal until they end (they have)
    session.connect(ids=ids)  # returns None, as CANFAR's

    assert session.destroy_with(prefix="nothing-matches") == {}
    assert session.destroy_with(prefix="test") == {ids[0]: True, ids[1]: True}
    wait_for(lambda: gone(session, ids), what="the sessions to be destroyed")
    session.close()


def test_destroy_with_a_regex_kind_and_status(workers: WorkerProcs) -> None:
    workers.start(1, allow_commands=True)
    session = Session()
    [a] = session.create(name="my-desktop", image="img:1", cmd="true")
    [b] = session.create(name="desktop-b", image="img:1", cmd="true")
    [c] = session.create(name="nb-desktop", image="img:1", kind="notebook", cmd="true")
    wait_for(lambda: finished(session, [a, b, c]), what="three sessions to complete")
    assert session.destroy_with(prefix="desktop$") == {a: True}  # regex, headless only
    assert session.destroy_with(prefix="desktop$", kind="notebook") == {c: True}
    assert session.destroy_with(prefix="desktop", status="Running") == {}
    assert session.destroy_with(prefix="desktop") == {b: True}  # a literal prefix
    with pytest.raises(ValueError, match="prefix"):
        session.destroy_with(prefix="desktop(")
    wait_for(lambda: gone(session, [a, b, c]), what="the sessions to be destroyed")
    session.close()


def test_destroy_as_in_the_seed() -> None:
    session = Session()
    first, second = session.create(name="doomed", image="img:1", cmd="true", replicas=2)
    assert session.destroy(id=first) == {first: True}
    assert session.destroy(id=["hjko98yghj", second]) == {"hjko98yghj": False, second: True}
    assert [r["status"] for r in session.info(ids=[first, second])] == ["Terminating"] * 2
    with pytest.raises(ValueError, match="^id: "):
        session.destroy(ids=first, id=first)
    with pytest.raises(TypeError, match="^ids: "):
        session.destroy()
    session.close()


def test_connect_opens_the_dashboard_page(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    session = Session()
    ids = session.create(name="shown", image="img:1", cmd="true", replicas=2)
    redis.set(Keys("sq:").dashboard(), "http://dash.example/")
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open_new_tab", opened.append)
    session.connect(ids=ids[0])
    session.connect(ids=ids)
    urls = [f"http://dash.example/sessions/{sid}" for sid in ids]
    assert opened == [urls[0], *urls]
    assert [r["connectURL"] for r in session.info(ids=ids)] == urls
    session.close()


def test_async_session_answers_as_session(workers: WorkerProcs) -> None:
    workers.start(1, allow_commands=True)

    async def create() -> list[str]:
        async with AsyncSession(timeout=120, concurrency=100, loglevel=40) as session:
            pool = session.client.redis.connection_pool
            assert pool.connection_kwargs["socket_timeout"] == 120
            return await session.create(
                name="test", image="images.canfar.net/skaha/terminal:1.1.1", cores=2, ram=8,
                gpu=1, kind="headless", cmd="env", env={"TEST": "test"}, replicas=2,
            )  # fmt: skip

    ids = asyncio.run(create())
    sync = Session()
    wait_for(lambda: finished(sync, ids), what="both replicas to complete")
    queried = [ids[0], "hjko98yghj", ids[1]]

    async def read() -> list[Any]:
        async with AsyncSession(concurrency=1) as session:  # the calls wait their turn
            return list(
                await asyncio.gather(
                    session.fetch(), session.fetch(kind="notebook"), session.stats(),
                    session.info(ids=queried), session.logs(id=queried),
                    session.events(ids=queried),
                )
            )  # fmt: skip

    assert asyncio.run(read()) == [
        sync.fetch(), [], sync.stats(), sync.info(ids=queried), sync.logs(id=queried),
        sync.events(ids=queried),
    ]  # fmt: skip

    async def destroy() -> tuple[dict[str, bool], dict[str, bool]]:
        async with AsyncSession() as session:
            return (
                await session.destroy(id=[ids[0], "hjko98yghj"]),
                await session.destroy_with(prefix="test-2$"),
            )

    assert asyncio.run(destroy()) == ({ids[0]: True, "hjko98yghj": False}, {ids[1]: True})
    wait_for(lambda: gone(sync, ids), what="the sessions to be destroyed")
    sync.close()
