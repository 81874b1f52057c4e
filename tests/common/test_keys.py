from __future__ import annotations

from sessionq.common.keys import Keys, command_queue_for, session_of
from sessionq.common.rqcompat import rq_keys


def test_every_key_is_under_the_prefix() -> None:
    k = Keys("pfx:")
    names = [m for m in dir(k) if not m.startswith("_") and callable(getattr(k, m))]
    for name in names:
        fn = getattr(k, name)
        argc = fn.__code__.co_argcount - 1
        assert fn(*["x"] * argc).startswith("pfx:"), name


def test_rq_keys_live_under_prefix_rq() -> None:
    rq = rq_keys("sq:")
    assert rq.job("a-1") == "sq:rq:job:a-1"
    assert rq.queue("default") == "sq:rq:queue:default"
    assert rq.worker("w").startswith("sq:rq:")


def test_task_ids_name_their_session() -> None:
    assert session_of("abcdef123456-17") == "abcdef123456"


def test_command_queues() -> None:
    assert command_queue_for(None) == "commands"
    assert command_queue_for("gpu") == "gpu.commands"
