"""sessionq: sessions - named, persistent collections of task runs - on Redis.

The one import name (SPEC §9): the producer's API, the worker's `@task` and `current_task()`,
and the errors. The card's folders are installed under it as `sessionq.common`,
`sessionq.producer` and `sessionq.worker`.
"""

from sessionq.common.errors import (
    AccessDenied,
    ConfigError,
    ConnectionFailed,
    NotFound,
    ObjectNotFound,
    RedisFull,
    RedisUnavailable,
    SessionNotFound,
    SessionqError,
    TaskFailed,
    TaskNotFound,
    ValidationError,
)
from sessionq.common.sessionconfig import SessionConfig
from sessionq.producer.aio import AsyncClient
from sessionq.producer.client import Client
from sessionq.producer.session import AsyncSession, Session
from sessionq.producer.task import Task, Workflow
from sessionq.worker.context import TaskContext, current_task
from sessionq.worker.registry import task

__all__ = [
    "AccessDenied",
    "AsyncClient",
    "AsyncSession",
    "Client",
    "ConfigError",
    "ConnectionFailed",
    "NotFound",
    "ObjectNotFound",
    "RedisFull",
    "RedisUnavailable",
    "Session",
    "SessionConfig",
    "SessionNotFound",
    "SessionqError",
    "Task",
    "TaskContext",
    "TaskFailed",
    "TaskNotFound",
    "ValidationError",
    "Workflow",
    "current_task",
    "task",
]
