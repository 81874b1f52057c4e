"""The public Python API of sessionq (SPEC §2, §3, §5)."""

from common.errors import (
    AccessDenied,
    ConfigError,
    ConnectionFailed,
    NotFound,
    SessionNotFound,
    SessionqError,
    TaskFailed,
    TaskNotFound,
    ValidationError,
)
from common.sessionconfig import SessionConfig
from producer.aio import AsyncClient
from producer.client import Client
from producer.session import Session
from producer.task import Task, Workflow

__all__ = [
    "AccessDenied",
    "AsyncClient",
    "Client",
    "ConfigError",
    "ConnectionFailed",
    "NotFound",
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
