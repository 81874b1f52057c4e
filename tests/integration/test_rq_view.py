"""RQ's own readers agree with us (STYLE.md): `Job.fetch` of a sessionq run shows its status,
function, arguments, queue, worker and times as RQ's API reads them."""

from __future__ import annotations

import tests.tasks  # noqa: F401 - registers the @task functions
from sessionq.common.codec import RQSerializer
from sessionq.common.rqcompat import load_rq
from sessionq.common.settings import Settings
from sessionq.producer import Client
from sessionq.worker.loop import SessionWorker


def test_job_fetch_reads_a_queued_and_a_finished_run(client: Client, settings: Settings) -> None:
    rq = load_rq(settings.prefix)  # RQ under our prefix (imported at module level, it would not be)
    Job, JobStatus = rq.job.Job, rq.job.JobStatus
    [sid] = client.create("seen-by-rq", task="tests.tasks:add", args=[2, 3], timeout=60)
    run_id = f"{sid}-1"
    queued = Job.fetch(run_id, connection=client.redis, serializer=RQSerializer)
    assert queued.get_status() == JobStatus.QUEUED
    assert (queued.func_name, queued.args, queued.kwargs) == ("tests.tasks:add", [2, 3], {})
    assert queued.origin == "default" and queued.timeout == 60
    assert queued.enqueued_at is not None and queued.ended_at is None

    worker = SessionWorker(settings)
    worker.work(burst=True)
    done = Job.fetch(run_id, connection=client.redis, serializer=RQSerializer)
    assert done.get_status() == JobStatus.FINISHED and done.is_finished
    assert done.worker_name == worker.name
    assert done.started_at is not None and done.ended_at is not None
    assert done.ended_at >= done.started_at
    # RQ 3 reads return values from a per-job results stream, which sessionq does not write
    # (a stream per run would cost more memory than the run; README "RQ's view"): the value
    # is the session's record, and Job.fetch says nothing of it
    assert client.info(sid)[0]["result"] == 5
    assert done.return_value() is None
