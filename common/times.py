"""Time formatting: epoch milliseconds and RQ's job-hash times as records show them (ISO 8601
UTC), and RQ's own timestamp format for the job hash."""

from __future__ import annotations

import datetime as dt
import functools
import math

from sessionq.common import codec


@functools.lru_cache(maxsize=4096)
def iso_from_ms(ms: int | str | bytes | None) -> str | None:
    """ISO 8601 UTC string for epoch milliseconds (what records show); None stays None.
    Cached: a listing formats many equal times (sessions made by one create share theirs)."""
    if ms in (None, b"", ""):
        return None
    stamp = dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.lru_cache(maxsize=16)
def rq_time(epoch_s: float) -> str:
    """RQ's own timestamp format for the fields of its job hash, as
    datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") writes it (cached:
    a batch of runs shares one time; the date and time of day once a second: strftime was a
    tenth of adding a run)."""
    fraction, whole = math.modf(epoch_s)
    micros = round(fraction * 1e6)  # (as fromtimestamp: half to even)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1, micros + 1_000_000
    return f"{_rq_second(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=4)
def _rq_second(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def iso_from_rq_time(raw: bytes | str | None) -> str | None:
    """One of RQ's job times (microseconds) as records show times: ISO 8601, milliseconds."""
    if not raw:
        return None
    text = codec.text(raw)
    head, dot, tail = text.partition(".")
    if not dot or not tail.endswith("Z"):
        return text
    return f"{head}.{tail[:-1][:3].ljust(3, '0')}Z"
