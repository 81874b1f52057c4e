"""`sessionq worker`: start worker processes (loaded lazily by the `sessionq` group)."""

from __future__ import annotations

import logging
import os

import click

from sessionq.common.settings import Settings

log = logging.getLogger(__name__)


@click.command("worker")
@click.option(
    "--queue", "-q", "queues", multiple=True, help="Queue to serve (repeatable; default: default)."
)
@click.option(
    "--import",
    "-i",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Module whose @task functions may run (repeatable); found in the current directory "
    "first, as `python -m` does, then in each --path.",
)
@click.option(
    "--path",
    "paths",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    metavar="DIR",
    help="Another directory to import --import modules from (repeatable).",
)
@click.option(
    "--allow-commands", is_flag=True, help="Also run command runs (never through a shell)."
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty.")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Worker processes under this command.",
)
@click.option(
    "--max-jobs",
    "-j",
    type=click.IntRange(1, 10000),
    default=None,
    help="Runs in flight per worker process: async functions on its event loop, plain "
    "functions and commands in a pool of this many threads (default: SESSIONQ_MAX_JOBS, "
    "else 1).",
)
@click.option("--name", type=str, default=None, help="Base name of the worker processes.")
@click.option(
    "--cores",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Cores this worker offers (shown by stats).",
)
@click.option(
    "--ram",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="RAM in GB this worker offers (shown by stats).",
)
@click.pass_obj
def worker_command(
    settings: Settings, queues: tuple[str, ...], imports: tuple[str, ...], paths: tuple[str, ...],
    allow_commands: bool,
    burst: bool, concurrency: int, max_jobs: int | None, name: str | None, cores: float | None,
    ram: float | None,
) -> int:  # fmt: skip
    """Run workers: the control queue first, then the given queues."""
    from sessionq.common.connection import connect
    from sessionq.common.scripts import Scripts
    from sessionq.common.validation import check_queue
    from sessionq.worker.registry import extend_import_path, import_modules
    from sessionq.worker.supervisor import Supervisor, WorkerOptions

    for q in queues:
        check_queue(q)
    # the worker processes are forked from this one: they inherit the path
    extend_import_path([os.getcwd(), *paths])
    import_modules(list(imports))  # fail early, before any process starts
    redis = connect(settings)  # a clear error now if Redis is unreachable
    try:  # or if the namespace has another SESSIONQ_PARTITIONS
        Scripts(redis, settings).check_namespace()
    finally:
        redis.close()
    opts = WorkerOptions(
        queues=list(queues), allow_commands=allow_commands, burst=burst, name=name,
        cores=cores, ram=ram, imports=list(imports), max_jobs=max_jobs or settings.max_jobs,
    )  # fmt: skip
    return Supervisor(settings, opts, concurrency).run()
