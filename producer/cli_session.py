"""The `sessionq` commands on persistent sessions (SPEC §6): add, pause, play, step, stop,
restart (COMMANDS, which producer.cli adds to the group)."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from sessionq.common.errors import ValidationError
from sessionq.common.keys import session_of
from sessionq.producer.cli_base import (
    ARGS_HELP,
    client_of,
    control,
    error,
    parse_args,
    parse_env,
    parse_kwargs,
    retry_options,
    warn_unserved,
)
from sessionq.producer.client import Client
from sessionq.producer.task import RUN_IF, Task

COMMANDS: list[click.Command] = []  # registered on the group by producer.cli


def _control(name: str, call: Callable[[Client, list[str]], dict[str, bool]], doc: str) -> None:
    @click.command(name, help=f"{doc} IDS: session ids or names of your sessions.")
    @click.argument("ids", nargs=-1, required=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_context
    def command(ctx: click.Context, ids: tuple[str, ...], as_json: bool) -> int:
        client = client_of(ctx)
        return control(client, ids, name, lambda sids: call(client, sids), as_json)

    COMMANDS.append(command)


_control("pause", Client.pause, "Pause sessions: no further run starts (running ones carry on).")
_control("play", Client.play, "Play paused sessions: release their held runs, in order.")
_control("step", Client.step, "Release exactly one run of each paused session.")
_control("stop", Client.stop, "Stop sessions: cancel queued runs, stop running ones.")


@click.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--failed-only", is_flag=True, help="Only the failed tasks.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def restart(ctx: click.Context, ids: tuple[str, ...], failed_only: bool, as_json: bool) -> int:
    """Run the sessions' ended tasks again (IDS: session ids or names of yours)."""
    client = client_of(ctx)
    return control(
        client, ids, "restart", lambda sids: client.restart(sids, failed_only=failed_only),
        as_json,
    )  # fmt: skip


@click.command()
@click.argument("session")
@click.option("--task", default=None, metavar="MODULE:FUNC", help="Registered function to run.")
@click.option("--cmd", default=None, help="Command to run (split as a shell would).")
@click.option("--args", "args_", default=None, help=ARGS_HELP)
@click.option("--kwargs", "kwargs_json", default=None, metavar="JSON", help="Keyword arguments.")
@click.option("--env", "-e", "env", multiple=True, metavar="KEY=VALUE", help="Environment.")
@click.option("--name", default=None, help="Task name (default: the function or program).")
@click.option("--key", default=None, help="Idempotency key: adding it again adds nothing.")
@click.option("--depends-on", "depends_on", multiple=True, metavar="TASK_ID",
              help="A task it waits for (repeatable).")  # fmt: skip
@click.option("--run-if", type=click.Choice(RUN_IF), default=RUN_IF[0], show_default=True,
              help="How the tasks it depends on must have ended.")  # fmt: skip
@click.option("--in", "in_", type=float, default=None, help="Run after this many seconds.")
@click.option("--at", default=None, help="Run at this ISO 8601 time (UTC unless it says).")
@click.option("--cron", default=None, help="Run on this cron schedule, e.g. '*/5 * * * *'.")
@click.option("--retries", type=int, default=0, show_default=True, help="Retries after failure.")
@retry_options
@click.option("--timeout", type=float, default=None, help="Seconds before the run is killed.")
@click.option("--queue", default=None, help="Queue (default: default).")
@click.option("--json", "as_json", is_flag=True, help="Print the task id as JSON.")
@click.pass_context
def add(
    ctx: click.Context, session: str, task: str | None, cmd: str | None, args_: str | None,
    kwargs_json: str | None, env: tuple[str, ...], name: str | None, key: str | None,
    depends_on: tuple[str, ...], run_if: str, in_: float | None, at: str | None,
    cron: str | None, retries: int, retry_delay: float | None, backoff: str,
    timeout: float | None, queue: str | None, as_json: bool,
) -> int:  # fmt: skip
    """Add a task to your persistent session SESSION: its id or name; a name that names no
    session creates one (and says so on stderr)."""
    kwargs = parse_kwargs(kwargs_json)
    new = Task(
        task, cmd=cmd, args=parse_args(args_, typed=task is not None), kwargs=kwargs,
        env=parse_env(env), name=name, key=key,
        depends_on=list(depends_on) or None, run_if=run_if, in_=in_, at=at, cron=cron,
        retries=retries, retry_delay=retry_delay, backoff=backoff, timeout=timeout, queue=queue,
    )  # fmt: skip
    client = client_of(ctx)
    found = client.resolve([session]).found.get(session)
    if found is None:
        handle = client.session(session)
        click.echo(f"created session {handle.name} ({handle.id})", err=True)
    elif found.owner != client.user:
        error(f"session {found.id} ({found.name}) is not yours (owner {found.owner})")
        return 1
    elif not found.persistent:
        raise ValidationError(
            "session", f"{session!r} is session {found.id}, made by create(): add takes a "
            "persistent session (a new name creates one)",
        )  # fmt: skip
    else:
        handle = client.session(found.name)
    tid = handle.add(new)
    if as_json:
        click.echo(json.dumps({"session": session_of(tid), "task": tid}))
    else:
        click.echo(tid)
    if not (in_ is not None or at or cron):  # (a scheduled run waits in the schedule first)
        warn_unserved(client, queue, command=task is None)
    return 0


COMMANDS += [restart, add]
