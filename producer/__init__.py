"""The public Python API of sessionq (SPEC §2, §3, §5)."""

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
    "TaskFailed",
    "TaskNotFound",
    "ValidationError",
    "Workflow",
]
