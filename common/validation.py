"""Validation of what callers give: names, kinds, queues, numbers, env, arguments and task
functions; every error names its field (SPEC §2)."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from typing import Any

from sessionq.common import codec
from sessionq.common.errors import CodecError, ValidationError, ValidationTypeError
from sessionq.common.keys import COMMANDS_SUFFIX, CONTROL_QUEUE

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
KIND_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FUNC_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
MAX_REPLICAS = 10_000
BACKOFFS = ("exponential", "fixed")
MAX_TIMEOUT_S = 2**31 - 1  # about 68 years: what RQ's job hash and timers can hold


def type_error(name: str, want: str, value: object) -> ValidationTypeError:
    return ValidationTypeError(name, f"expected {want}, got {type(value).__name__}")


def check_name(value: object, field_name: str = "name") -> str:
    if not isinstance(value, str):
        raise type_error(field_name, "a string", value)
    if not NAME_RE.fullmatch(value):
        raise ValidationError(
            field_name,
            f"{value!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
        )
    return value


def check_kind(value: object) -> str:
    if not isinstance(value, str):
        raise type_error("kind", "a string", value)
    if not KIND_RE.fullmatch(value):
        raise ValidationError("kind", f"{value!r} must be a lowercase word (a-z, 0-9, '-')")
    return value


def check_queue(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise type_error("queue", "a string", value)
    if not QUEUE_RE.fullmatch(value) or value.endswith(COMMANDS_SUFFIX) or value == CONTROL_QUEUE:
        raise ValidationError("queue", f"{value!r} is not a valid queue name")
    return value


def check_positive(
    value: object, field_name: str, *, integer: bool = False, maximum: float | None = None
) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(field_name, "a number", value)
    if integer and not isinstance(value, int):
        raise type_error(field_name, "an integer", value)
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(field_name, f"must be positive, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValidationError(field_name, f"must be at most {maximum:g}, got {value!r}")
    return value


def check_int_range(value: object, field_name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(field_name, "an integer", value)
    if not low <= value <= high:
        raise ValidationError(field_name, f"must be {low}-{high}, got {value}")
    return value


def check_env(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise type_error("env", "a mapping", value)
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_RE.fullmatch(key):
            raise ValidationError("env", f"{key!r} is not a valid environment variable name")
        if isinstance(val, bool) or not isinstance(val, (str, int, float)):
            raise type_error(f"env[{key}]", "a string or number", val)
        out[key] = str(val)
    return out


def check_encodable(value: object, field_name: str) -> bytes:
    try:
        return codec.encode(value)
    except CodecError as exc:
        raise ValidationTypeError(field_name, f"not msgpack-serialisable: {exc}") from exc


def split_args(value: object, field_name: str = "args") -> list[Any]:
    """`args`: a string split as a shell would, or a list/tuple; None is no arguments."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise ValidationError(field_name, f"cannot split {value!r}: {exc}") from exc
    if isinstance(value, (list, tuple)):
        return list(value)
    raise type_error(field_name, "a string or a list", value)


def func_name_of(task: object) -> str:
    """The dotted name `"pkg.mod:func"` of a registered function (or that name given)."""
    if isinstance(task, str):
        if not FUNC_RE.fullmatch(task):
            raise ValidationError("task", f"{task!r} must look like 'package.module:function'")
        return task
    name = getattr(task, "__sessionq_name__", None)
    if isinstance(name, str):
        return name
    module, qual = getattr(task, "__module__", None), getattr(task, "__qualname__", None)
    if callable(task) and module and qual and "<" not in qual:
        return f"{module}:{qual}"
    raise type_error("task", "a 'module:function' string or a module-level function", task)
