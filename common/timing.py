"""When a scheduled task is due: `at`, `in_` and `cron` (SPEC §3) as epoch milliseconds."""

from __future__ import annotations

import datetime as dt

from croniter import croniter

from common.errors import ValidationError, ValidationTypeError


def check_cron(expr: object) -> str:
    """A cron expression croniter accepts (5 fields, or 6 with seconds last)."""
    if not isinstance(expr, str):
        raise ValidationTypeError("cron", f"expected a string, got {type(expr).__name__}")
    if not croniter.is_valid(expr):
        raise ValidationError("cron", f"{expr!r} is not a valid cron expression")
    return expr


def next_fire_ms(expr: str, after_ms: int) -> int:
    """The first time strictly after `after_ms` that cron `expr` names (epoch ms, UTC)."""
    start = dt.datetime.fromtimestamp(after_ms / 1000.0, tz=dt.UTC)
    return int(croniter(expr, start).get_next(float) * 1000)


def at_ms(value: object) -> int:
    """`at`: an aware or naive-UTC datetime, an ISO 8601 string, or epoch seconds."""
    if isinstance(value, bool):
        raise ValidationTypeError("at", "expected a datetime, an ISO string or epoch seconds")
    if isinstance(value, (int, float)):
        return int(value * 1000)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError("at", f"{value!r} is not an ISO 8601 time") from exc
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    raise ValidationTypeError("at", f"expected a datetime, an ISO string or epoch seconds, "
                                    f"got {type(value).__name__}")  # fmt: skip


def in_seconds(value: object) -> float:
    """`in_`: seconds from now (a number >= 0 or a timedelta)."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationTypeError("in_", f"expected seconds or a timedelta, got {value!r}")
    if not value >= 0:
        raise ValidationError("in_", f"must be >= 0 seconds, got {value!r}")
    return float(value)
