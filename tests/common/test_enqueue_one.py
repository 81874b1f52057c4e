"""enqueue_one_call (a create of one replica, laid out from pieces made once) sends what
enqueue_call sends for the same session and run: the same keys and the same args."""

from __future__ import annotations

import pytest
from redis import Redis

from sessionq.common import codec
from sessionq.common.jobhash import JobFields, build_run
from sessionq.common.keys import run_id
from sessionq.common.scripts import Scripts
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import TaskState


@pytest.mark.parametrize(
    ("kind", "owner", "queue", "options"),
    [
        ("headless", "alice", "default", {}),
        ("notebook", "bob", "gpu", {"timeout": 30, "retries": 2}),
        ("headless", "alice", "commands:default", {"cmd": "echo hi", "env": {"A": "1"}}),
    ],
)
def test_one_call_is_the_general_call(
    kind: str, owner: str, queue: str, options: dict[str, object]
) -> None:
    settings = Settings.from_env("redis://127.0.0.1:1/0", environ={}, user=owner)
    scripts = Scripts(Redis.from_url(settings.url), settings)
    task = None if "cmd" in options else "tests.tasks:noop"
    spec = build_run(name="n", task=task, **options)
    for sid, now in (("0a1b2c3d4e5f", 1_700_000_000.25), ("ffeeddccbbaa", 1_700_000_001.5)):
        fields = JobFields(spec.data, spec.meta(), spec.shared_fields(queue, now))
        record = codec.encode({"id": sid})
        one = scripts.enqueue_one_call(sid, record, "n", kind, owner, queue, fields, now, 5000)
        run = (0, run_id(sid, 1), "n", TaskState.QUEUED.value, queue, fields, None)
        general = scripts.enqueue_call([(sid, True, record, "n", kind, owner)], [run], now=now,
                                       retention_ms=5000)  # fmt: skip
        assert one == general
