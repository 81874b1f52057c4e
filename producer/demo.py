"""`sessionq demo`: the main job, end to end on a private Redis."""

from __future__ import annotations

import sys
import time

import click

from sessionq.common.events import EventType
from sessionq.common.jobhash import build_run
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status
from sessionq.producer.client import Client
from sessionq.producer.follow import follow
from sessionq.producer.stack import Stack

DEMO_FUNC = "sessionq.worker.demo:simulate"
DEMO_QUEUE = "sessionq-demo"


def run_demo(settings: Settings, *, runs: int, workers: int) -> int:
    where = settings.url if settings.url_configured else "an embedded Redis"
    click.echo(f"sessionq demo: {runs} runs on {workers} worker processes, on {where}")
    # a queue of its own: workers already serving a Redis it is pointed at (which know
    # nothing of the demo's function) take none of its runs; one name for every demo (its
    # workers all run the same function), so demos leave no queue per run behind
    queue = DEMO_QUEUE
    with (
        Stack(
            settings,
            workers=workers,
            imports=["sessionq.worker.demo"],
            queues=[queue],
            log_level="ERROR",
        ) as stack,
        Client(settings=stack.settings) as client,
    ):
        started = time.monotonic()
        click.echo(f"Redis at {stack.settings.url}")
        sid = client.open_session(f"demo-{int(time.time())}", kind="demo")
        specs = [
            build_run(name=f"simulate-{i}", task=DEMO_FUNC, args=[i], retries=1, queue=queue)
            for i in range(runs)
        ]
        hello = "print('hello from a command run, no shell involved')"
        specs.append(build_run(name="hello-command", cmd=[sys.executable, "-c", hello],
                               queue=queue))  # fmt: skip
        client.add_runs(sid, specs)
        click.echo(f"session {sid}: {len(specs)} runs queued; following it live")
        tally = follow(client, [sid], logs=False)[sid]
        elapsed = time.monotonic() - started
        record = client.info(sid)[0]
        counts = record["tasks"]
        click.echo("")
        click.echo(
            f"session {sid} {record['status']} in {elapsed:.1f}s "
            f"({len(specs) / elapsed:.0f} runs/s end to end)"
        )
        click.echo("  runs: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v))
        retried = sum(1 for e in client.events(sid) or [] if e["type"] == EventType.TASK_RETRYING)
        click.echo(f"  retried after a (simulated) failure: {retried}")
        click.echo("  command output: " + (client.logs(sid) or {}).get(sid, "").strip())
        click.echo(f"  workers seen: {client.stats()['workers']['count']}")
        ok = record["status"] == Status.COMPLETED and tally.done == len(specs)
    click.echo("demo finished; every process it started has stopped" if ok else "demo FAILED")
    return 0 if ok else 1
