"""SPEC §3 edge cases found in review: bad input, adds racing stops, destroys and each other,
replaced and removed tasks - and the session's counters always equal to its task records."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from common.errors import ValidationError
from common.models import TaskState
from common.rqcompat import rq_keys
from common.settings import Settings
from producer import Client, Session, SessionConfig, Task
from tests.conftest import WorkerProcs, wait_for

NOOP = "tests.tasks:noop"


def recount(session: Session) -> dict[str, int]:
    counts = {s.value: 0 for s in TaskState}
    for record in session:
        counts[record["state"]] += 1
    return counts


def assert_counts_match(client: Client, session: Session) -> None:
    """The session's counters equal the recount from its task records, and the global run
    counters equal the sum over every session's."""
    assert session.progress()["tasks"] == recount(session)
    total = {s.value: 0 for s in TaskState}
    for record in client.fetch(view="all"):
        for state, n in record["tasks"].items():
            total[state] += n
    assert client.stats()["tasks"] == total


def ended(session: Session) -> bool:
    return session.progress()["status"] in ("Completed", "Failed", "Stopped")


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("depends_on", 5),
        ("depends_on", ""),
        ("depends_on", [""]),
        ("at", float("nan")),
        ("at", float("inf")),
        ("at", 1e20),
        ("in_", float("inf")),
    ],
)
def test_every_bad_task_field_is_a_validation_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        Task(NOOP, **{field: value})


@pytest.mark.parametrize(("field", "value"), [("cycle_sleep", float("inf"))])
def test_a_bad_config_field_is_a_validation_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=field):
        SessionConfig(**{field: value})


# -- stops and held runs ------------------------------------------------------------------
def test_stop_then_add_runs_the_new_task(client: Client, workers: WorkerProcs) -> None:
    s = client.session("stop-then-add")
    old = s.add(Task(NOOP, name="old"))
    s.stop()  # no worker yet: the stop waits on the control queue
    new = s.add(Task(NOOP, name="new"))
    assert s.progress()["status"] == "Running"
    workers.start()
    wait_for(lambda: ended(s), what="session end")
    assert s[old]["state"] == "canceled" and s[new]["state"] == "succeeded"
    assert s.progress()["status"] == "Completed"
    assert_counts_match(client, s)


def test_removing_a_held_task_then_step_releases_the_next_one(
    client: Client, workers: WorkerProcs, settings: Settings, redis: Redis
) -> None:
    s = client.session("held-removed", config={"autoplay": False})
    a = s.add(Task(NOOP, name="a"))
    b = s.add(Task(NOOP, name="b"))
    s.remove(a)
    workers.start()
    s.step()
    wait_for(lambda: s[b]["state"] == "succeeded", what="b ran")
    assert redis.exists(rq_keys(settings.prefix).job(a)) == 0
    assert_counts_match(client, s)
