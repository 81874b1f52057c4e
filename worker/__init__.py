"""The stateless sessionq worker: `@task` to register functions, `current_task()` inside one."""

from sessionq.worker.context import TaskContext, current_task
from sessionq.worker.registry import task

__all__ = ["TaskContext", "current_task", "task"]
