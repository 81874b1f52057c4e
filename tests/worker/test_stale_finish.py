"""A finish run.lua does not record (the run was recovered, canceled or destroyed while it
ran: 'stale') still answers three fields, so that the step's other replies stay in step."""

from __future__ import annotations

from sessionq.common import codec
from sessionq.common.keys import run_id
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.loop import SessionWorker


def test_a_stale_finish_keeps_the_step_reply_in_step(client: Client, settings: Settings) -> None:
    [sid] = client.create("stale", task="tests.tasks:add", args=[1, 2], replicas=1)
    [mine] = client.create("mine", task="tests.tasks:add", args=[2, 3])
    worker = SessionWorker(settings)
    scripts = worker.scripts
    # this worker starts `mine`; the other run was never its own (as after a failover lost
    # its claim, or a reaper recovered it): its finish is stale
    scripts.step_send(worker.head, worker.name, [], [], "", claim=2)
    started = scripts.step_receive().started
    assert {s[0] for s in started} == {run_id(sid, 1), run_id(mine, 1)}
    client.redis.hset(scripts.rq.job(run_id(sid, 1)), "worker_name", "someone-else")
    payload = codec.encode(5)
    finishes = [(run_id(sid, 1), "default", "succeeded", payload, 1),
                (run_id(mine, 1), "default", "succeeded", payload, 1)]  # fmt: skip
    scripts.step_send(worker.head, worker.name, finishes, [], "")
    reply = scripts.step_receive()
    assert [(f.run_id, f.result, f.terminating, f.waited_on) for f in reply.finished] == [
        (run_id(sid, 1), "stale", False, False),
        (run_id(mine, 1), "succeeded", False, False),
    ]
    assert reply.started == []
    assert [r["status"] for r in client.info([sid, mine])] == ["Running", "Completed"]
