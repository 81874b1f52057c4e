"""Property tests (hypothesis): validation of every create/run field (SPEC §2), and the codec
and wire parsers given any bytes or values - a clear error of our own, never another one."""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionq.common import codec
from sessionq.common.errors import CodecError, ValidationError, ValidationTypeError
from sessionq.common.events import decode_event
from sessionq.common.jobhash import build_run, parse_job_data, parse_meta
from sessionq.common.records import SessionRecord
from sessionq.common.validation import (
    MAX_REPLICAS,
    MAX_TIMEOUT_S,
    check_int_range,
    check_kind,
    check_name,
    check_queue,
)

NAME_START = string.ascii_letters + string.digits
NAME_CHARS = NAME_START + "._-"
RUN_FIELDS = ("cmd", "task", "args", "kwargs", "env", "queue", "timeout", "retries", "cores",
              "ram", "gpu")  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
# what a caller might pass for any field: right, wrong, nested, not serialisable at all
anything = st.recursive(
    scalars | st.builds(object) | st.sets(st.integers(), max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=3)
    ),
    max_leaves=4,
)
# closer to what is valid, so that acceptance is exercised too
plausible = {
    "cmd": st.none() | st.text(max_size=20) | st.lists(st.text(max_size=8), max_size=3),
    "task": st.none() | st.sampled_from(["tests.tasks:add", "m:f", "os.system", "a:b:c", ""]),
    "args": st.none() | st.text(max_size=20) | st.lists(scalars, max_size=3),
    "kwargs": st.none() | st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    "env": st.none() | st.dictionaries(st.text(max_size=5), scalars, max_size=3),
    "queue": st.none() | st.text(max_size=10),
    "timeout": st.none() | st.floats() | st.integers(-5, 5) | st.just(2**64),
    "retries": st.integers(-5, 2000),
    "cores": st.none() | st.floats() | st.integers(-5, 5),
    "ram": st.none() | st.floats() | st.integers(-5, 5),
    "gpu": st.none() | st.floats() | st.integers(-5, 5),
}


def names_a_field(exc: ValidationError) -> bool:
    field = exc.field.split("[", 1)[0]
    return field in RUN_FIELDS and str(exc).startswith(f"{exc.field}: ")


def is_positive_or_none(value: Any) -> bool:
    return value is None or (math.isfinite(value) and value > 0)


MISSING = object()


@given(st.fixed_dictionaries({f: st.just(MISSING) | plausible[f] | anything for f in RUN_FIELDS}))
def test_build_run_accepts_only_what_spec_allows_and_names_the_field(
    drawn: dict[str, Any],
) -> None:
    fields = {name: value for name, value in drawn.items() if value is not MISSING}
    if "cmd" not in fields and "task" not in fields:
        fields["task"] = "tests.tasks:add"
    try:
        spec = build_run(name="n", **fields)
    except ValidationError as exc:  # a ValueError; ValidationTypeError is also a TypeError
        assert names_a_field(exc), str(exc)
        assert isinstance(exc, ValueError)
        return
    # accepted: it follows SPEC §2 and can be written
    assert (spec.func is None) == ("cmd" in fields and fields["cmd"] is not None)
    assert all(is_positive_or_none(getattr(spec, f)) for f in ("timeout", "cores", "ram", "gpu"))
    assert spec.timeout is None or spec.timeout <= MAX_TIMEOUT_S
    assert 0 <= spec.retries <= 1000
    env_start, env_chars = string.ascii_letters + "_", string.ascii_letters + string.digits + "_"
    assert all(k and k[0] in env_start and all(c in env_chars for c in k) for k in spec.env)
    assert all(isinstance(v, str) for v in spec.env.values())
    if spec.func is None:
        assert spec.argv and all(isinstance(a, str) for a in spec.argv) and spec.argv[0]
    try:
        job = spec.job_fields("default", 0.0)
    except ValidationError as exc:
        assert exc.field == "args" and "512 KiB" in str(exc)
        return
    assert parse_job_data(job.data)[0] == (spec.func or "@command")
    assert parse_meta(job.sq)["name"] == "n"


@given(st.text(max_size=70) | anything)
def test_a_name_is_valid_exactly_as_spec_says(value: Any) -> None:
    ok = (
        isinstance(value, str)
        and 1 <= len(value) <= 63
        and value[0] in NAME_START
        and all(c in NAME_CHARS for c in value)
    )
    if ok:
        assert check_name(value) == value
    else:
        with pytest.raises(ValidationError, match="^name: ") as info:
            check_name(value)
        assert isinstance(info.value, ValidationTypeError) == (not isinstance(value, str))


@given(anything | st.text(max_size=70))
def test_kind_and_queue_are_checked(value: Any) -> None:
    for check, field in ((check_kind, "kind"), (check_queue, "queue")):
        try:
            check(value)
        except ValidationError as exc:
            assert exc.field == field
        else:
            assert value is None or isinstance(value, str)


@given(anything)
def test_replicas_are_1_to_10000(value: Any) -> None:
    ok = type(value) is int and 1 <= value <= MAX_REPLICAS
    if ok:
        assert check_int_range(value, "replicas", 1, MAX_REPLICAS) == value
    else:
        with pytest.raises(ValidationError, match="^replicas: "):
            check_int_range(value, "replicas", 1, MAX_REPLICAS)


# -- the codec and the parsers of what a worker or listener reads ------------------------------
msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
encodable = st.recursive(
    msgpack_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner),
    max_leaves=10,
)  # fmt: skip


@given(encodable, st.data())
def test_every_truncation_of_an_encoding_is_a_codec_error(value: Any, data: st.DataObject) -> None:
    raw = codec.encode(value)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CodecError, match="undecodable"):
        codec.decode(raw[:cut])


@given(st.binary() | encodable.map(codec.encode) | anything)
def test_parsers_raise_codec_errors_only(raw: Any) -> None:
    """Whatever sits in a job hash, the session index or an event: a value or CodecError."""
    for parse in (
        codec.decode,
        lambda r: codec.decode_map(r, "x"),
        parse_job_data,
        parse_meta,
        decode_event,
        lambda r: SessionRecord.from_wire(codec.decode_map(r, "session")),
    ):
        try:
            parse(raw)
        except CodecError:
            pass


wire_values = (
    st.sampled_from([math.inf, -math.inf, math.nan, 2**64 - 1, -(2**63), -1, 0, "", b"\xff"])
    | msgpack_scalars
    | st.lists(msgpack_scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), msgpack_scalars, max_size=2)
)
WIRE_FIELDS = ["v", "seq", "ts", "type", "session", "task", "data", "id", "name", "kind", "owner",
               "created_at", "replica_id", "replica_count", "cores"]  # fmt: skip


@given(st.dictionaries(st.sampled_from(WIRE_FIELDS), wire_values))
def test_maps_with_wrong_fields_are_codec_errors(wire: dict[str, Any]) -> None:
    raw = codec.encode(wire)
    for parse in (decode_event, lambda r: SessionRecord.from_wire(codec.decode_map(r, "s"))):
        try:
            parse(raw)
        except CodecError:
            pass


@given(st.integers(-3, 1000).filter(lambda v: v != 1) | st.none() | st.text(max_size=3))
def test_a_session_record_of_another_schema_version_is_refused(version: Any) -> None:
    wire = SessionRecord(id="s", name="n", kind="headless", owner="o", created_at_ms=1).to_wire()
    wire["v"] = version
    with pytest.raises(CodecError, match="schema version"):
        SessionRecord.from_wire(wire)


# -- Task (SPEC §3): every field, as for create ----------------------------------------------
TASK_FIELDS = (*RUN_FIELDS, "func", "name", "key", "depends_on", "run_if", "at", "in_")
when = (
    st.none()
    | st.floats()
    | st.integers(-(2**70), 2**70)
    | st.datetimes()
    | st.timedeltas()
    | st.text(max_size=30)
    | st.sampled_from(["2026-01-01T00:00:00Z", "0 3 * * *", "*/5 * * * *", "nope"])
)
task_plausible = {
    **{f: plausible[f] for f in RUN_FIELDS if f not in ("task",)},
    "func": plausible["task"],
    "name": st.none() | st.sampled_from(["ok", "bad name", ""]) | st.text(max_size=5),
    "key": st.none() | st.text(max_size=3) | st.just("k" * 300),
    "depends_on": st.none() | st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=2),
    "run_if": st.sampled_from(["succeeded", "failed", "finished", "maybe"]),
    "at": when,
    "in_": when,
    "cron": when,
}


@given(st.fixed_dictionaries({f: st.just(MISSING) | s | anything
                              for f, s in task_plausible.items()}))  # fmt: skip
def test_a_task_is_made_or_names_the_bad_field(drawn: dict[str, Any]) -> None:
    from sessionq.producer import Task

    fields = {k: v for k, v in drawn.items() if v is not MISSING}
    if "cmd" not in fields and "func" not in fields:
        fields["func"] = "tests.tasks:add"
    func = fields.pop("func", None)
    try:
        task = Task(func, **fields)
    except ValidationError as exc:
        assert exc.field.split("[", 1)[0] in (*TASK_FIELDS, "cron"), str(exc)
        return
    due = task.due_ms(0.0)  # what adding it computes: a time Redis can hold
    assert due is None or -(2**63) <= due < 2**63
