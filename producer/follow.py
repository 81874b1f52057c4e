"""Following sessions in a terminal: a progress bar per session (rich), falling back to
plain lines when stdout is not a terminal; used by `watch`, `connect` and `demo`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sessionq.common.events import EventType
from sessionq.common.scripts import Scripts
from sessionq.common.vocabulary import ENDED_TASK_STATES, Status, TaskState
from sessionq.producer import plans
from sessionq.producer.plans import Plan

T = TypeVar("T")


class Followed(Protocol):
    """What `follow` needs of a client (Client is one)."""

    @property
    def scripts(self) -> Scripts: ...

    def info(self, ids: str | Sequence[str]) -> list[dict[str, Any]]: ...

    def listen(
        self,
        ids: str | Sequence[str] | None = None,
        *,
        types: Sequence[str] | None = None,
        after: int | dict[str, int] | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]: ...

    def _run(self, plan: Plan[T]) -> T: ...


PLAIN_EVERY_S = 1.0
SESSION_STATUS = {
    EventType.SESSION_CREATED: Status.PENDING, EventType.SESSION_STARTED: Status.RUNNING,
    EventType.SESSION_RESUMED: Status.RUNNING, EventType.SESSION_PAUSED: Status.PAUSED,
    EventType.SESSION_COMPLETED: Status.COMPLETED, EventType.SESSION_FAILED: Status.FAILED,
    EventType.SESSION_STOPPED: Status.STOPPED, EventType.SESSION_DESTROYED: "Destroyed",
}  # fmt: skip


@dataclass
class Tally:
    """One session's progress as its events tell it."""

    name: str
    total: int = 0
    done: int = 0
    failed: int = 0
    status: str = Status.PENDING
    partial: dict[str, float] = field(default_factory=dict)  # running task -> fraction

    @property
    def completed(self) -> float:
        return self.done + sum(self.partial.values())

    def apply(self, event: dict[str, Any]) -> None:
        etype, task = event["type"], event.get("task")
        if etype == EventType.TASK_STARTED and self.status == Status.PENDING:
            self.status = Status.RUNNING
        if etype == EventType.TASK_QUEUED and event["data"].get("reason") is None:
            self.total += 1
        elif etype in (EventType.TASK_SUCCEEDED, EventType.TASK_FAILED, EventType.TASK_CANCELED):
            self.done += 1
            self.failed += etype == EventType.TASK_FAILED
            self.partial.pop(task or "", None)
        elif etype == EventType.TASK_PROGRESS and task:
            self.partial[task] = float(event["data"].get("fraction", 0.0))
        elif etype in SESSION_STATUS:
            self.status = event["data"].get("status") or SESSION_STATUS[etype]


def follow(
    client: Followed,
    ids: Sequence[str],
    *,
    logs: bool = True,
    out: TextIO | None = None,
    timeout: float | None = None,
) -> dict[str, Tally]:
    """Show each session's progress (and, with `logs`, its log lines) until all have ended
    or Ctrl-C; returns the final tallies."""
    stream = out or sys.stdout
    records = {r["id"]: r for r in client.info(list(ids))}
    seqs = client._run(plans.seqs(client.scripts, list(records)))
    tallies: dict[str, Tally] = {}
    after: dict[str, int] = {}
    for (sid, record), seq in zip(records.items(), seqs, strict=True):
        counts = record["tasks"]
        tallies[sid] = Tally(
            name=record["name"], status=record["status"], total=sum(counts.values()),
            done=sum(counts[state] for state in ENDED_TASK_STATES),
            failed=counts[TaskState.FAILED],
        )  # fmt: skip
        after[sid] = int(seq or 0)
    if not tallies:
        return tallies
    events = client.listen(list(tallies), after=after, timeout=timeout)
    if stream.isatty():
        _follow_rich(events, tallies, logs, stream)
    else:
        _follow_plain(events, tallies, logs, stream)
    return tallies


def _follow_rich(events: Any, tallies: dict[str, Tally], logs: bool, stream: TextIO) -> None:
    console = Console(file=stream)
    columns = (
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        bars: dict[str, TaskID] = {
            sid: progress.add_task(t.name, total=max(t.total, 1), failed=0, status=t.status)
            for sid, t in tallies.items()
        }
        for event in events:
            sid = event["session"]
            tally = tallies[sid]
            tally.apply(event)
            if logs and event["type"] == EventType.TASK_LOG:
                progress.console.print(f"[dim]{tally.name}[/dim] {event['data'].get('line', '')}",
                                       markup=True, highlight=False)  # fmt: skip
            progress.update(bars[sid], total=max(tally.total, 1), completed=tally.completed,
                            failed=tally.failed, status=tally.status)  # fmt: skip


def _follow_plain(events: Any, tallies: dict[str, Tally], logs: bool, stream: TextIO) -> None:
    """A line per session as it starts to be followed, then at most one per PLAIN_EVERY_S
    while it changes, and one as it ends."""
    last_print: dict[str, float] = {}
    last_line: dict[str, str] = {}

    def show(sid: str, tally: Tally, *, change: bool = True) -> None:
        line = (f"{tally.name} {sid}: {tally.done}/{tally.total} done, {tally.failed} failed, "
                f"{tally.status}")  # fmt: skip
        if line != last_line.get(sid):
            last_line[sid] = line
            if change:  # (the first line starts no wait: the first change shows at once)
                last_print[sid] = time.monotonic()
            print(line, file=stream, flush=True)

    for sid, tally in tallies.items():
        show(sid, tally, change=False)
    for event in events:
        sid = event["session"]
        tally = tallies[sid]
        tally.apply(event)
        if logs and event["type"] == EventType.TASK_LOG:
            print(f"{tally.name}: {event['data'].get('line', '')}", file=stream, flush=True)
        ended = event["type"].startswith("session.") and event["type"] != EventType.SESSION_CREATED
        if ended or time.monotonic() - last_print.get(sid, 0.0) >= PLAIN_EVERY_S:
            show(sid, tally)
