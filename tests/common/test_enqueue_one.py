"""enqueue_call of one session and one run (a create of one replica, a session's add of one
run: laid out from pieces made once) sends what the general layout sends for them: the same
keys and the same args."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis

from sessionq.common import codec
from sessionq.common.jobhash import JobFields, build_run
from sessionq.common.keys import run_id
from sessionq.common.scripts import Scripts
from sessionq.common.scripts.enqueue import RunColumns
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import TaskState

SHAPES = [
    # kind, owner, queue, run options, (is_new, extra fields, options, claim, worker)
    ("headless", "alice", "default", {}, (True, None, None, "", "")),
    ("notebook", "bob", "gpu", {"timeout": 30, "retries": 2}, (True, None, None, "", "")),
    ("headless", "alice", "commands:default", {"cmd": "echo hi", "env": {"A": "1"}},
     (True, None, None, "", "")),
    ("session", "carol", "default", {},
     (False, {"cond_silent": "1"}, {"policy": "raise"}, "", "")),
    ("session", "carol", "default", {}, (True, None, None, "carol/mine", "")),
    ("session", "dave", "q2", {"retries": 1, "retry_delay": 2}, (False, {"due": 5}, {"policy":
     "raise", "due": 5, "key": "k1"}, "", "w-1")),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "owner", "queue", "run_options", "call"), SHAPES)
def test_one_run_call_is_the_general_call(
    kind: str, owner: str, queue: str, run_options: dict[str, Any], call: tuple[Any, ...]
) -> None:
    is_new, extra, options, claim, worker = call
    settings = Settings.from_env("redis://127.0.0.1:1/0", environ={}, user=owner)
    scripts = Scripts(Redis.from_url(settings.url), settings)
    task = None if "cmd" in run_options else "tests.tasks:noop"
    spec = build_run(name="n", task=task, **run_options)
    for sid, number, now in (("0a1b2c3d4e5f", 1, 1_700_000_000.25),
                             ("ffeeddccbbaa", 7, 1_700_000_001.5)):  # fmt: skip
        fields = JobFields(spec.data, spec.meta(), spec.shared_fields(queue, now), extra)
        record = codec.encode({"id": sid}) if is_new else b""
        session = (sid, is_new, record, "n" if is_new else "", kind, owner)
        run = (0, run_id(sid, number), "n", TaskState.QUEUED.value, queue, fields, options)
        columns = scripts.enqueue_call([session], RunColumns.of([run]), now=now,
                                       retention_ms=5000, claim=claim, worker=worker)  # fmt: skip
        assert scripts._one_calls, "laid out from the pieces"
        one = scripts.enqueue_call([session], [run], now=now, retention_ms=5000, claim=claim,
                                   worker=worker)  # fmt: skip
        general = scripts._enqueue_call([session], RunColumns.of([run]), worker, now, claim,
                                        5000, None)  # fmt: skip
        assert one == general
        assert columns == general
