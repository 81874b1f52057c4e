"""A producer call that Redis carried out but whose reply was lost is sent again by
redis-py's retry: it must take effect once."""

from __future__ import annotations

from typing import Any

import pytest

import tests.tasks  # noqa: F401 - registers the @task functions
from common.scripts import Scripts
from common.settings import Settings
from producer import Client
from worker.loop import SessionWorker


def test_a_create_sent_twice_is_applied_once(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Scripts.enqueue

    def enqueue_with_a_lost_reply(self: Scripts, *args: Any, **kwargs: Any) -> list[Any]:
        original(self, *args, **kwargs)  # carried out; the reply never arrived, and ...
        return original(self, *args, **kwargs)  # ... redis-py sent it again

    monkeypatch.setattr(Scripts, "enqueue", enqueue_with_a_lost_reply)
    ids = client.create("twice", task="tests.tasks:add", args=[1, 2], replicas=2)
    monkeypatch.undo()
    assert [r["tasks"]["queued"] for r in client.info(ids)] == [1, 1]
    for sid in ids:
        assert [e["type"] for e in client.events(sid) or []] == ["session.created", "task.queued"]
    assert client.stats()["tasks"]["queued"] == 2
    SessionWorker(settings).work(burst=True)
    assert [r["status"] for r in client.info(ids)] == ["Completed", "Completed"]


def test_an_add_sent_twice_is_applied_once(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from producer import Task

    s = client.session("resent")
    original = Scripts.enqueue

    def enqueue_with_a_lost_reply(self: Scripts, *args: Any, **kwargs: Any) -> list[Any]:
        original(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Scripts, "enqueue", enqueue_with_a_lost_reply)
    tid = s.add(Task("tests.tasks:add", args=[1, 2], name="once"))
    monkeypatch.undo()
    assert s.progress()["tasks"]["queued"] == 1 and s.list_ids() == [tid]
    assert [e["type"] for e in client.events(s.id) or []].count("task.queued") == 1
    SessionWorker(settings).work(burst=True)
    assert s.progress()["status"] == "Completed" and s[tid]["result"] == 3
