"""rq_time writes RQ's timestamps as datetime's strftime does, to the microsecond (rounded
half to even, as fromtimestamp rounds)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from sessionq.common.times import rq_time


def strftime(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_rq_time_is_strftime(epoch_s: float) -> None:
    assert rq_time(epoch_s) == strftime(epoch_s)


def test_rq_time_at_the_edges_of_a_second() -> None:
    for epoch_s in (0.0, 1.5, 1e9 - 5e-7, 1e9 + 0.9999995, 1_700_000_000.9999996,
                    *(1e9 + k / 1e6 + 5e-7 for k in range(-50, 50))):  # fmt: skip
        assert rq_time(epoch_s) == strftime(epoch_s)
