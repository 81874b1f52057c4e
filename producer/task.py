"""`Task` (one run to add to a session) and `Workflow` (a DAG of tasks), SPEC §3."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sessionq.common import codec
from sessionq.common.errors import ValidationError, ValidationTypeError
from sessionq.common.jobhash import SCALAR_TYPES, RunSpec, build_run, plain_spec
from sessionq.common.timing import at_ms, check_cron, in_seconds, next_fire_ms
from sessionq.common.validation import check_name
from sessionq.common.vocabulary import TaskState

# how the tasks a run depends on must have ended: in this state, or "finished" (in any)
RUN_IF = (TaskState.SUCCEEDED.value, TaskState.FAILED.value, "finished")
MAX_KEY_CHARS = 256


class Task:
    """One run: a registered function (`func`) or a command (`cmd`/`args`/`env`), with its
    name, idempotency `key`, dependencies (`depends_on` + `run_if`), schedule (`at`, `in_`
    or `cron`), retries (waiting `retry_delay` seconds before the first, then doubling with
    backoff="exponential" or the same with "fixed", with jitter), timeout and resources.
    Validated when made; added with `Session.add`. The same object added twice to a session
    is stored once."""

    def __init__(
        self,
        func: str | Callable[..., Any] | None = None,
        *,
        cmd: str | Sequence[str] | None = None,
        args: Any = None,
        kwargs: dict[str, Any] | None = None,
        env: dict[str, Any] | None = None,
        name: str | None = None,
        key: str | None = None,
        depends_on: Task | str | Iterable[Task | str] | None = None,
        run_if: str = RUN_IF[0],
        retries: int = 0,
        retry_delay: float | None = None,
        backoff: str = "exponential",
        timeout: float | None = None,
        at: Any = None,
        in_: Any = None,
        cron: str | None = None,
        cores: float | None = None,
        ram: float | None = None,
        gpu: float | None = None,
        queue: str | None = None,
    ) -> None:
        if name is not None:
            check_name(name)
        # (a session names a run as it adds it, RunSpec.meta(name): the spec's own name is
        # not the task's, so that tasks alike share one spec)
        scalars = (queue, timeout, retries, retry_delay, backoff, cores, ram, gpu)
        if (type(func) is str and cmd is None and args is None and kwargs is None
                and env is None and SCALAR_TYPES.issuperset(map(type, scalars))):  # fmt: skip
            self.spec: RunSpec = plain_spec(func, *scalars)
        else:
            self.spec = build_run(
                name="task", cmd=cmd, task=func, args=args, kwargs=kwargs, env=env,
                queue=queue, timeout=timeout, retries=retries, retry_delay=retry_delay,
                backoff=backoff, cores=cores, ram=ram, gpu=gpu,
            )  # fmt: skip
        self.name = name
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS):
            raise ValidationError("key", f"must be a string of 1-{MAX_KEY_CHARS} characters")
        self.key = key
        if run_if not in RUN_IF:
            raise ValidationError("run_if", f"{run_if!r} is not one of {RUN_IF}")
        self.run_if = run_if
        # its list made on first use of `depends_on` (most tasks have none: one object less)
        self._depends_on: list[Task | str] | None = (
            None if depends_on is None else _parents(depends_on)
        )
        self.at_ms: int | None = None
        self.in_s: float | None = None
        self.cron: str | None = None
        if at is not None or in_ is not None or cron is not None:
            given = [n for n, v in (("at", at), ("in_", in_), ("cron", cron)) if v is not None]
            if len(given) > 1:
                raise ValidationError(given[1], f"give at most one of at, in_, cron (got {given})")
            self.at_ms = at_ms(at) if at is not None else None
            self.in_s = in_seconds(in_) if in_ is not None else None
            self.cron = check_cron(cron) if cron is not None else None
        self.ids: dict[str, str] = {}  # session id -> this task's id there

    @property
    def depends_on(self) -> list[Task | str]:
        """The tasks (Task objects or task ids) it runs after: a list of its own to change."""
        if self._depends_on is None:
            self._depends_on = []
        return self._depends_on

    @depends_on.setter
    def depends_on(self, value: list[Task | str]) -> None:
        self._depends_on = value

    @property
    def default_name(self) -> str:
        """The function's name, or the command's program name."""
        return default_name(self.spec)

    @property
    def scheduled(self) -> bool:
        """Has it a time to wait for (at, in_ or cron)?"""
        return self.at_ms is not None or self.in_s is not None or self.cron is not None

    def due_ms(self, now_s: float) -> int | None:
        """When it may first run (epoch ms), or None for "when ready"."""
        if self.at_ms is not None:
            return self.at_ms
        if self.in_s is not None:
            return int((now_s + self.in_s) * 1000)
        if self.cron is not None:
            return next_fire_ms(self.cron, int(now_s * 1000))
        return None

    def extra_fields(
        self, parent_ids: list[str], due: int | None, *, cond_silent: bool
    ) -> dict[str, Any]:
        """Job hash fields beyond RQ's: dependencies, condition, schedule, key."""
        fields: dict[str, Any] = {}
        if parent_ids:
            fields["deps"] = codec.encode(parent_ids)
            fields["run_if"] = self.run_if
        if due is not None:
            fields["due"] = due
        if self.cron is not None:
            fields["cron"] = self.cron
        if self.key is not None:
            fields["key"] = self.key
        if cond_silent:
            fields["cond_silent"] = "1"
        return fields

    def __repr__(self) -> str:
        what = self.spec.func or " ".join(self.spec.argv)
        return f"Task({what!r}, name={self.name!r})"


# exact types: a bool (an int to isinstance) is refused every time, by build_run
def parents(task: Task) -> Sequence[Task | str]:
    """task.depends_on, without making its list when it has none."""
    return task._depends_on or ()


def default_name(spec: RunSpec) -> str:
    """An unnamed run's name: its function's name, or its command's program name."""
    if spec.func is not None:
        base = spec.func.rpartition(":")[2]
    else:
        base = os.path.basename(spec.argv[0]) or "command"
    clean = "".join(c if c.isalnum() or c in "._-" else "_" for c in base).lstrip("._-")
    return (clean or "task")[:63]


def _parents(value: Task | str | Iterable[Task | str] | None) -> list[Task | str]:
    if value is None:
        return []
    if isinstance(value, (Task, str)):
        items: list[Any] = [value]
    elif isinstance(value, Iterable):
        items = list(value)
    else:
        raise ValidationTypeError(
            "depends_on", f"expected Task objects or task ids, got {type(value).__name__}"
        )
    for item in items:
        if not isinstance(item, (Task, str)):
            raise ValidationTypeError(
                "depends_on", f"expected Task objects or task ids, got {type(item).__name__}"
            )
        if isinstance(item, str) and not item:
            raise ValidationError("depends_on", "a task id must not be empty")
    return items


class Workflow:
    """A DAG of tasks (DPF's workflow): `wf.add(task)` returns the task; the edges are the
    tasks' `depends_on`. `tasks()` gives them parents first; a cycle is a ValidationError."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: list[Task] = []
        for task in tasks:
            self.add(task)

    def add(self, task: Task) -> Task:
        if not isinstance(task, Task):
            raise ValidationTypeError("task", f"expected a Task, got {type(task).__name__}")
        if not any(t is task for t in self._tasks):
            self._tasks.append(task)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    def tasks(self) -> list[Task]:
        """Every task with its ancestors, each after all of its parents."""
        return topological(self._tasks)


def topological(roots: Iterable[Task]) -> list[Task]:
    """`roots` and their ancestors (depends_on Task objects), parents first; a cycle is a
    ValidationError naming it, raised before anything is written."""
    if isinstance(roots, list) and len(roots) == 1 and not parents(roots[0]):
        return list(roots)  # one task, no parents: what add() of a plain task asks
    order: list[Task] = []
    done: set[int] = set()
    path: list[Task] = []

    def visit(task: Task) -> None:
        if id(task) in done:
            return
        if any(t is task for t in path):
            cycle = path[[id(t) for t in path].index(id(task)) :] + [task]
            names = " -> ".join(t.name or t.default_name for t in cycle)
            raise ValidationError("depends_on", f"the tasks form a cycle: {names}")
        path.append(task)
        for parent in parents(task):
            if isinstance(parent, Task):
                visit(parent)
        path.pop()
        done.add(id(task))
        order.append(task)

    for task in roots:
        visit(task)
    return order
