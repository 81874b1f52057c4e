"""When a scheduled task is due: `at`, `in_` and `cron` (SPEC §3) as epoch milliseconds."""

from __future__ import annotations

import datetime as dt
import math

from croniter import croniter

from sessionq.common.errors import ValidationError, ValidationTypeError

MAX_IN_S = 100 * 365 * 86400  # a century: later than that is a mistake, not a schedule
EPOCH_MIN_S = dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp()
EPOCH_MAX_S = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp()


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
        if not (math.isfinite(value) and EPOCH_MIN_S <= value <= EPOCH_MAX_S):
            raise ValidationError("at", f"{value!r} is not a time in the years 1-9999")
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
    if not math.isfinite(value):
        raise ValidationError("in_", f"must be a finite number of seconds; got {value!r}")
    if value < 0:
        raise ValidationError("in_", f"must be 0 seconds or more; got {value!r}")
    if value >= MAX_IN_S:
        raise ValidationError(
            "in_", f"must be less than {MAX_IN_S} seconds (100 years); got {value!r}"
        )
    return float(value)
