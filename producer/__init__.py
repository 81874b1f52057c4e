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
from producer.aio import AsyncClient
from producer.client import Client

__all__ = [
    "AccessDenied",
    "AsyncClient",
    "Client",
    "ConfigError",
    "ConnectionFailed",
    "NotFound",
    "SessionNotFound",
    "SessionqError",
    "TaskFailed",
    "TaskNotFound",
    "ValidationError",
]
