"""The `sessionq` command (SPEC §6): parse, build Settings, call the API, print."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from redis.exceptions import ResponseError

from sessionq.common.connection import CLUSTER_NODE, is_cluster_refusal
from sessionq.common.errors import ConfigError, SessionqError, ValidationError
from sessionq.common.events import EventType
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import ENDED_TASK_STATES, Status
from sessionq.producer import cli_session
from sessionq.producer.cli_base import (
    ARGS_HELP,
    client_of,
    control,
    echo_json,
    error,
    parse_args,
    parse_env,
    parse_kwargs,
    retry_options,
    sessions_of,
    warn_unserved,
)
from sessionq.producer.client import format_event

log = logging.getLogger(__name__)
EXIT_INTERRUPTED = 130
LAZY_COMMANDS = {"worker": "sessionq.worker.cli:worker_command"}
DASHBOARD_MODULES = frozenset({"starlette", "uvicorn", "jinja2", "prometheus_client", "anyio"})


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"sessionq: error: {message}", err=True)
    sys.exit(code)


class SessionqGroup(click.Group):
    """Lazily loads `worker` (producer never imports worker), and turns errors into one line
    on stderr with SPEC §6's exit codes: 2 for bad input, 1 for other sessionq errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            module, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        """A field spelt for Python only (`in_`: `in` is a keyword) is named as the option
        that fills it was typed (`--in`); other fields keep the API's names, as SPEC's
        messages spell them (`depends_on`)."""
        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            if not exc.field.endswith("_"):
                raise
            command = self.commands.get(ctx.invoked_subcommand or "")
            for param in command.params if command is not None else ():
                spelt = {o.lstrip("-").replace("-", "_") for o in param.opts}
                if isinstance(param, click.Option) and exc.field in {param.name, *spelt}:
                    raise ValidationError(max(param.opts, key=len), exc.problem) from exc
            raise

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True, **extra: Any,
    ) -> Any:  # fmt: skip
        try:
            rv = super().main(args, prog_name or "sessionq", complete_var, False, **extra)
        except click.UsageError as exc:
            _fail(exc.format_message().splitlines()[0], 2)
        except ValidationError as exc:
            _fail(f"--{exc}" if exc.field == "url" else str(exc), 2)
        except SessionqError as exc:
            _fail(str(exc), 1)
        except ResponseError as exc:  # MOVED, CROSSSLOT: a plain URL's (a cluster's follows)
            if not is_cluster_refusal(exc):
                raise
            _fail(f"--url {CLUSTER_NODE}", 2)
        except (KeyboardInterrupt, click.Abort):
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """--version: the installed distribution's (a checkout run without installing has none)."""
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("sessionq")
    except PackageNotFoundError:
        found = "unknown (not installed: pip install .)"
    click.echo(f"sessionq, version {found}")
    ctx.exit()


@click.group(cls=SessionqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.option(
    "--url",
    envvar="SESSIONQ_URL",
    default=None,
    help="Redis URL (env SESSIONQ_URL, then REDIS_URL).",
)
@click.option("--prefix", envvar="SESSIONQ_PREFIX", default=None, help="Key prefix (default sq:).")
@click.option(
    "--user",
    envvar="SESSIONQ_USER",
    default=None,
    help="Owner recorded on sessions (default: the OS user).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Logging level (default: INFO for worker, up and dashboard, else WARNING).",
)
@click.pass_context
def cli(
    ctx: click.Context, url: str | None, prefix: str | None, user: str | None, log_level: str | None
) -> None:
    """sessionq: sessions - named, persistent collections of task runs - on Redis."""
    servers = ("worker", "up", "dashboard")
    level = (log_level or ("INFO" if ctx.invoked_subcommand in servers else "WARNING")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        ctx.obj = Settings.from_env(url, prefix=prefix, user=user)
    except ConfigError as exc:  # a bad --prefix, --user or SESSIONQ_* setting: bad input
        raise click.UsageError(str(exc)) from exc


def main() -> None:
    cli.main(prog_name="sessionq")


# -- sessions (SPEC §2) ------------------------------------------------------------------------
@cli.command()
@click.argument("name")
@click.option("--image", default=None, help="Container image label (recorded).")
@click.option("--cores", type=float, default=None, help="Cores the run asks for.")
@click.option(
    "--ram", type=float, default=None, help="RAM in GB the run asks for (caps a command)."
)
@click.option("--kind", default="headless", show_default=True, help="Session kind.")
@click.option("--gpu", type=float, default=None, help="GPUs the run asks for.")
@click.option(
    "--cmd", default=None, help="Command to run (split as a shell would, never run by one)."
)
@click.option("--args", "args_", default=None, help=ARGS_HELP)
@click.option(
    "--env",
    "-e",
    "env",
    multiple=True,
    metavar="KEY=VALUE",
    help="Environment variable (repeatable).",
)
@click.option(
    "--replicas",
    "-r",
    type=int,
    default=1,
    show_default=True,
    help="Sessions to create: NAME-1 ... NAME-N.",
)
@click.option(
    "--task",
    default=None,
    metavar="MODULE:FUNC",
    help="Registered function to run instead of a command.",
)
@click.option(
    "--kwargs",
    "kwargs_json",
    default=None,
    metavar="JSON",
    help="Keyword arguments of --task, as a JSON object.",
)
@click.option("--queue", default=None, help="Queue (default: default).")
@click.option("--timeout", type=float, default=None, help="Seconds before the run is killed.")
@click.option("--retries", type=int, default=0, show_default=True, help="Retries after a failure.")
@retry_options
@click.option("--json", "as_json", is_flag=True, help="Print the ids as JSON.")
@click.pass_context
def create(
    ctx: click.Context, name: str, image: str | None, cores: float | None, ram: float | None,
    kind: str, gpu: float | None, cmd: str | None, args_: str | None, env: tuple[str, ...],
    replicas: int, task: str | None, kwargs_json: str | None, queue: str | None,
    timeout: float | None, retries: int, retry_delay: float | None, backoff: str,
    as_json: bool,
) -> None:  # fmt: skip
    """Create session(s) running a command or a registered function."""
    kwargs = parse_kwargs(kwargs_json)
    client = client_of(ctx)
    ids = client.create(
        name, image, cores, ram, kind, gpu, cmd, parse_args(args_, typed=task is not None),
        parse_env(env), replicas,
        task=task, kwargs=kwargs, queue=queue, timeout=timeout, retries=retries,
        retry_delay=retry_delay, backoff=backoff,
    )  # fmt: skip
    if as_json:
        echo_json(ids)
    else:
        click.echo("\n".join(ids))
    warn_unserved(client, queue, command=task is None)


NAME_WIDTH = 24


def _cut(text: str, width: int) -> str:
    """`text` in at most `width` characters; a cut one ends with an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(records: list[dict[str, Any]]) -> None:
    head = f"{'ID':<13} {'NAME':<24} {'KIND':<10} {'STATUS':<12} {'DONE':>11} {'CREATED':<24}"
    click.echo(head)
    for r in records:
        t = r["tasks"]
        done = f"{sum(t[state] for state in ENDED_TASK_STATES)}/{sum(t.values())}"
        click.echo(f"{r['id']:<13} {_cut(r['name'], NAME_WIDTH):<24} {r['kind']:<10} "
                   f"{r['status']:<12} {done:>11} {r['created_at'] or '':<24}")  # fmt: skip


@cli.command("ls")
@click.option("--kind", default=None, help="Only this kind.")
@click.option("--status", default=None, help="Only this status (Pending, Running, Completed, ...).")
@click.option("--all", "all_", is_flag=True, help="Every user's sessions, not only yours.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def ls_command(
    ctx: click.Context, kind: str | None, status: str | None, all_: bool, as_json: bool
) -> None:
    """List sessions."""
    records = client_of(ctx).fetch(kind=kind, status=status, view="all" if all_ else None)
    if as_json:
        echo_json(records)
    else:
        _table(records)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Sessions by status, runs by state, queues, workers, cores and RAM."""
    data = client_of(ctx).stats()
    if as_json:
        echo_json(data)
        return
    for section, values in data.items():
        click.echo(f"{section:<9} {_pairs(values)}")


def _pairs(values: dict[str, Any], sep: str = "  ") -> str:
    return sep.join(f"{k}={v}" for k, v in values.items())


# -- sessions by id or name: every command below resolves its references in one call ----------
@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--tasks", "with_tasks", is_flag=True, help="Also each session's task records.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def info(ctx: click.Context, ids: tuple[str, ...], with_tasks: bool, as_json: bool) -> int:
    """Show session records (IDS: session ids or names of your sessions)."""
    client = client_of(ctx)
    sessions, ok = sessions_of(client, ids)
    records = client.info([s.id for s in sessions]) if sessions else []
    if with_tasks:
        for r in records:
            r["task_records"] = client.tasks(r["id"])
    if as_json:
        echo_json(records)
    else:
        for r in records:
            click.echo(f"== {r['id']}")
            for key, value in r.items():
                if key != "task_records":
                    shown = _pairs(value, " ") if isinstance(value, dict) else value
                    click.echo(f"  {key:<13} {shown}")
            for t in r.get("task_records", []):
                error = (t["error"] or "").strip().splitlines()[-1:] or [""]
                click.echo(f"  - {t['id']:<18} {t['name'][:20]:<20} {t['state'] or '?':<10} "
                           f"attempts={t['attempts']} {error[0][:60]}".rstrip())  # fmt: skip
    return 0 if ok and len(records) == len(sessions) else 1


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option(
    "--follow", "-f", is_flag=True, help="Print lines as they arrive, until the sessions end."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def logs(ctx: click.Context, ids: tuple[str, ...], follow: bool, as_json: bool) -> int:
    """Print the sessions' captured output and log lines (IDS: ids or names)."""
    client = client_of(ctx)
    sessions, ok = sessions_of(client, ids)
    sids = [s.id for s in sessions]
    if not sids:
        return 1
    if follow:
        for event in client.listen(sids, types=[EventType.TASK_LOG], after=0):
            line = event["data"].get("line", "")
            click.echo(line if len(sids) == 1 else f"{event['session']}: {line}")
        return 0 if ok else 1
    out = client.logs(sids) or {}
    if as_json:
        echo_json(out)
    else:
        for sid, text in out.items():
            if len(sids) > 1:
                click.echo(f"== {sid}")
            click.echo(text, nl=False)
    return 0 if ok and len(out) == len(sids) else 1


def _check_types(
    ctx: click.Context, param: click.Parameter, types: tuple[str, ...]
) -> tuple[str, ...]:
    """--type: event types of SPEC §5 (or `op.NAME`), or a prefix of them ending in `*`."""
    from sessionq.common.events import check_event_types

    try:
        check_event_types(types)
    except ValidationError as exc:
        raise click.BadParameter(exc.problem, ctx=ctx, param=param) from exc
    return types


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option(
    "--follow", "-f", is_flag=True, help="Print events as they happen, until the sessions end."
)
@click.option(
    "--type",
    "types",
    multiple=True,
    callback=_check_types,
    help="Only this event type; a trailing * matches a prefix ('task.*').",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_context
def events(
    ctx: click.Context, ids: tuple[str, ...], follow: bool, types: tuple[str, ...], as_json: bool
) -> int:
    """Print the sessions' events (IDS: ids or names)."""
    from sessionq.common.events import matches

    client = client_of(ctx)
    sessions, ok = sessions_of(client, ids)
    sids = [s.id for s in sessions]
    if not sids:
        return 1
    if follow:
        stream = client.listen(sids, types=list(types) or None, after=0)
    else:
        wanted = frozenset(types) or None
        stream = iter([e for e in client.events(sids) or [] if matches(e["type"], wanted)])
    for event in stream:
        click.echo(json.dumps(event) if as_json else format_event(event))
    return 0 if ok else 1


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def watch(ctx: click.Context, ids: tuple[str, ...]) -> int:
    """A progress bar per session until they end (plain lines when not a terminal)."""
    from sessionq.producer.follow import follow

    client = client_of(ctx)
    sessions, ok = sessions_of(client, ids)
    if not sessions:
        return 1
    tallies = follow(client, [s.id for s in sessions], logs=False)
    for sid, tally in tallies.items():
        click.echo(f"{tally.name} {sid}: {tally.status} ({tally.done}/{tally.total} done, "
                   f"{tally.failed} failed)")  # fmt: skip
    done = tallies and all(t.status == Status.COMPLETED for t in tallies.values())
    return 0 if ok and done else 1


@cli.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def destroy(ctx: click.Context, ids: tuple[str, ...], as_json: bool) -> int:
    """Destroy sessions (IDS: ids or names of yours; carried out by workers)."""
    client = client_of(ctx)
    return control(client, ids, "destroy", client.destroy, as_json)


@cli.command("destroy-with")
@click.argument("prefix")
@click.option("--kind", default="headless", show_default=True, help="Only this kind.")
@click.option(
    "--status", default=Status.COMPLETED.value, show_default=True, help="Only this status."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def destroy_with(ctx: click.Context, prefix: str, kind: str, status: str, as_json: bool) -> int:
    """Destroy sessions whose name starts with PREFIX (a regex if it has metacharacters)."""
    result = client_of(ctx).destroy_with(prefix, kind=kind, status=status)
    if not result:
        error(f"no sessions matched {prefix!r} (kind {kind}, status {status})")
        return 1
    if as_json:
        echo_json(result)
    else:
        for sid, accepted in result.items():
            if accepted:
                click.echo(f"{sid} accepted")
            else:
                error(f"session {sid}: destroy refused (being destroyed meanwhile?)")
    return 0 if all(result.values()) else 1


@cli.command()
@click.option(
    "--older-than", type=click.FloatRange(min=0), default=None, metavar="S",
    help="Only sessions that ended at least S seconds ago.",
)  # fmt: skip
@click.option("--all", "all_", is_flag=True, help="Every user's sessions, not only yours.")
@click.option("--json", "as_json", is_flag=True, help="Print the ids removed as JSON.")
@click.pass_context
def prune(ctx: click.Context, older_than: float | None, all_: bool, as_json: bool) -> None:
    """Remove your ended sessions made by create() now, with their runs, logs and history
    (otherwise removed SESSIONQ_RETENTION_S after they end; persistent ones are left)."""
    removed = client_of(ctx).prune(older_than, view="all" if all_ else None)
    if as_json:
        echo_json(removed)
        return
    for sid in removed:
        click.echo(sid)
    click.echo(f"{len(removed)} session(s) removed", err=True)


# -- running it (SPEC §7) ----------------------------------------------------------------------
@cli.command()
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "--allow-commands/--no-allow-commands",
    default=True,
    show_default=True,
    help="Let the workers run commands.",
)
@click.option(
    "--import",
    "-i",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Modules with @task functions.",
)
@click.pass_context
def up(ctx: click.Context, workers: int, allow_commands: bool, imports: tuple[str, ...]) -> int:
    """A Redis (embedded when no URL is set) and workers, in the foreground until Ctrl-C."""
    from sessionq.producer.stack import Stack

    with Stack(
        ctx.obj, workers=workers, allow_commands=allow_commands, imports=list(imports)
    ) as stack:
        banner = (f"sessionq is up: SESSIONQ_URL={stack.settings.url} "
                  f"({workers} worker process(es)); Ctrl-C stops it")  # fmt: skip
        stack.wait(ready=lambda: click.echo(banner))
    return 0


@cli.command()
@click.option(
    "--runs",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Runs in the demo session.",
)
@click.option(
    "--workers",
    "-w",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Worker processes.",
)
@click.pass_context
def demo(ctx: click.Context, runs: int, workers: int) -> int:
    """The main job: a Redis (embedded when no URL is set), workers, and a session of many
    runs followed live; prints a summary and cleans up."""
    from sessionq.producer.demo import run_demo

    return run_demo(ctx.obj, runs=runs, workers=workers)


@cli.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; beyond loopback the buttons need a token.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--token",
    envvar="SESSIONQ_DASHBOARD_TOKEN",
    default=None,
    help="Token guarding the control buttons (env SESSIONQ_DASHBOARD_TOKEN); "
    "generated and printed when listening beyond loopback without one.",
)
@click.option("--root-path", default="", help="Path prefix when served behind a proxy (/x).")
@click.option(
    "--public-url",
    default=None,
    help="Base URL registered for connect_url (default http://HOST:PORT/ROOT-PATH).",
)
@click.pass_context
def dashboard(
    ctx: click.Context, host: str, port: int, token: str | None, root_path: str,
    public_url: str | None,
) -> None:  # fmt: skip
    """The live web dashboard and /metrics, until Ctrl-C."""
    try:
        from sessionq.producer.dashboard import serve
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in DASHBOARD_MODULES:
            raise
        raise ConfigError(
            "the dashboard needs its extra: pip install 'sessionq[dashboard]', or "
            f"pip install '.[dashboard]' in a checkout (missing module {missing})"
        ) from exc
    serve(ctx.obj, host=host, port=port, token=token, root_path=root_path, url=public_url,
          echo=click.echo)  # fmt: skip


for _command in cli_session.COMMANDS:  # add, pause, play, step, stop, restart
    cli.add_command(_command)
