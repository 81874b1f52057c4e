from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionq.common import codec
from sessionq.common.errors import CodecError
from sessionq.common.events import Event, decode_event
from sessionq.common.records import SessionRecord

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20
)


@given(values)
def test_round_trip(value: object) -> None:
    assert codec.decode(codec.encode(value)) == value


@given(st.binary())
def test_garbage_is_a_codec_error_or_a_value(data: bytes) -> None:
    try:
        codec.decode(data)
    except CodecError as exc:
        assert "undecodable" in str(exc)


def test_truncated_msgpack_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="undecodable"):
        codec.decode(codec.encode({"a": "b" * 100})[:-5])


def test_pickle_is_not_accepted_as_a_map() -> None:
    with pytest.raises(CodecError):
        codec.decode_map(pickle.dumps({"a": 1}), "job field 'sq'")


def test_unencodable_object_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="cannot encode"):
        codec.encode(object())


def test_rq_serializer_is_msgpack() -> None:
    payload: tuple[object, ...] = ("tests.tasks:add", None, [1, 2], {})
    assert codec.RQSerializer.loads(codec.RQSerializer.dumps(payload)) == list(payload)


def test_session_record_round_trip() -> None:
    record = SessionRecord(
        id="abc",
        name="n",
        kind="headless",
        owner="me",
        created_at_ms=5,
        cores=2,
        replica_id=2,
        replica_count=3,
        persistent=True,
        config={"autoplay": False},
    )
    wire = codec.decode(codec.encode(record.to_wire()))
    assert SessionRecord.from_wire(wire) == record
    assert wire["v"] == 1


def test_event_round_trip_and_bad_event() -> None:
    event = Event(
        seq=3, ts=1.5, type="task.started", session="s", task="s-1", worker="w", data={"attempt": 1}
    )
    assert decode_event(codec.encode(event.to_wire())) == event.to_wire()
    with pytest.raises(CodecError, match="event"):
        decode_event(codec.encode({"v": 1, "type": "x"}))
