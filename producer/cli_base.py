"""What every `sessionq` command shares (SPEC §6): the client of the invocation, JSON output,
--args/--kwargs/--env parsing, sessions named by id or name, and the control commands' loop
(resolve, refuse with a reason, call, print). The commands are in producer.cli and
producer.cli_session."""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from sessionq.common.errors import SessionqError, ValidationError
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import ENDED_STATUSES, Status
from sessionq.producer import plans
from sessionq.producer.client import Client
from sessionq.producer.plans import SessionRef

F = TypeVar("F", bound=Callable[..., Any])


def client_of(ctx: click.Context) -> Client:
    settings: Settings = ctx.obj
    return ctx.with_resource(Client(settings=settings))


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError("env", f"{pair!r} must be KEY=VALUE")
        env[key] = value
    return env


ARGS_HELP = (
    "Arguments, split as a shell would. With --task each word is typed: 7 is an int, 7.5 a "
    "float, true/false/null what JSON says, s:7 or '\"7\"' (a JSON string) a string, anything "
    "else a string. With --cmd every word stays a string."
)
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
JSON_WORDS = {"true": True, "false": False, "null": None}


def typed_word(word: str) -> Any:
    """One word of --args for a --task (SPEC §9): an int, a float, true/false/null, a JSON
    string ('"7"') or `s:7` as a string; anything else stays the string it is."""
    if word.startswith("s:"):
        return word[2:]
    if word in JSON_WORDS:
        return JSON_WORDS[word]
    if JSON_NUMBER.fullmatch(word):
        value = json.loads(word)
        if isinstance(value, int) or math.isfinite(value):
            return value
        return word
    if len(word) >= 2 and word[0] == word[-1] == '"':
        try:
            value = json.loads(word)
        except ValueError:
            return word
        return value if isinstance(value, str) else word
    return word


def parse_args(text: str | None, *, typed: bool) -> str | list[Any] | None:
    """--args: for a --task a list of typed words; for a --cmd the string as given (the
    library splits it, and a command's arguments are strings)."""
    if text is None or not typed:
        return text
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValidationError("args", f"cannot split {text!r}: {exc}") from exc
    return [typed_word(word) for word in words]


def parse_kwargs(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValidationError("kwargs", f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValidationError("kwargs", "must be a JSON object")
    return value


def error(message: str) -> None:
    click.echo(f"sessionq: error: {message}", err=True)


def sessions_of(client: Client, refs: Sequence[str]) -> tuple[list[SessionRef], bool]:
    """The sessions that ids or the caller's session names name, each once; one error line
    per reference that names none. The second value is False when one did not."""
    resolved = client.resolve(list(refs))
    for ref in resolved.missing:
        error(f"no such session: {ref}")
    sessions = {s.id: s for s in resolved.found.values()}
    return list(sessions.values()), not resolved.missing


def refusal(client: Client, session: SessionRef, action: str) -> str | None:
    """Why `action` on this session would be refused, known before asking; None if not."""
    what = f"session {session.id} ({session.name})"
    if session.owner != client.user:
        return f"{what} is not yours (owner {session.owner}); {action} refused"
    if session.status == Status.TERMINATING:
        return f"{what} is being destroyed; {action} refused"
    if action == "step" and session.status != Status.PAUSED:
        return f"{what} is {session.status}, not paused; step refused"
    if action in ("pause", "play") and session.status in ENDED_STATUSES:
        return f"{what} is {session.status}, ended; {action} refused"
    return None


def control(
    client: Client, refs: Sequence[str], action: str,
    call: Callable[[list[str]], dict[str, bool]], as_json: bool,
) -> int:  # fmt: skip
    """A control command (destroy, pause, play, step, stop, restart): resolve the references,
    refuse with the reason what cannot be done, call the API with the rest, print."""
    sessions, ok = sessions_of(client, refs)
    result: dict[str, bool] = {}
    allowed = []
    for session in sessions:
        why = refusal(client, session, action)
        if why is None:
            allowed.append(session)
        else:
            error(why)
            result[session.id] = False
    if allowed:
        result.update(call([s.id for s in allowed]))
    refused = [s for s in allowed if not result.get(s.id)]
    if refused:  # changed meanwhile: read the sessions again to say why
        again = client.resolve([s.id for s in refused]).found
        for session in refused:
            now = again.get(session.id)
            if now is None:
                error(f"no such session: {session.id}")
            else:
                why = refusal(client, now, action)
                error(why or f"session {now.id} ({now.name}) is {now.status}; {action} refused")
    if as_json:
        echo_json(result)
    else:
        for sid, accepted in result.items():
            if accepted:
                click.echo(f"{sid} accepted")
    return 0 if ok and result and all(result.values()) else 1


def warn_unserved(client: Client, queue: str | None, *, command: bool) -> None:
    """Say on stderr when no live worker serves the queue a new run waits in: it waits
    until one starts (a command run, for one started with --allow-commands). Advice only:
    the runs are written already, so a failure to look is not the command's."""
    waits_in = plans.run_queue_of(queue, command=command)
    try:
        if waits_in in client._run(plans.served_queues(client.scripts)):
            return
    except SessionqError:
        return
    start = f"sessionq worker{f' --queue {queue}' if queue else ''}"
    start += " --allow-commands" if command else " --import MODULE"
    click.echo(f"warning: no live worker serves queue {waits_in!r}: the run waits until one "
               f"does ({start})", err=True)  # fmt: skip


def retry_options(command: F) -> F:
    """--retry-delay and --backoff (SPEC §9's Task(retry_delay=, backoff=)), after --retries."""
    command = click.option(
        "--backoff", type=click.Choice(["exponential", "fixed"]), default="exponential",
        show_default=True, help="How the delay grows from retry to retry (with jitter).",
    )(command)  # fmt: skip
    delay = click.option("--retry-delay", type=float, default=None,
                         help="Seconds before the first retry (default: at once).")  # fmt: skip
    return delay(command)
