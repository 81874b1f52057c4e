"""Every validation rule of SPEC §2, raised before anything is written."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sessionq.common.canfarstyle import names_for_replicas
from sessionq.common.errors import CodecError, ValidationError, ValidationTypeError
from sessionq.common.jobhash import RunSpec, build_run
from sessionq.common.validation import check_env, check_name, split_args


@pytest.mark.parametrize("name", ["a", "A1", "x" * 63, "run.1_b-c", "9lives"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "x" * 64, "a b", "a/b", "é"])
def test_bad_names_name_the_field(name: str) -> None:
    with pytest.raises(ValidationError, match="^name: "):
        check_name(name)


def test_name_of_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="^name: "):
        check_name(5)


def test_replica_names() -> None:
    assert names_for_replicas("job", 1) == ["job"]
    assert names_for_replicas("job", 3) == ["job-1", "job-2", "job-3"]


@pytest.mark.parametrize("field", ["cores", "ram", "gpu", "timeout"])
@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_resources_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=f"^{field}: "):
        build_run(name="n", cmd="true", **{field: value})


@pytest.mark.parametrize("field", ["cores", "ram", "gpu"])
def test_resources_must_be_numbers(field: str) -> None:
    with pytest.raises(ValidationTypeError, match=f"^{field}: "):
        build_run(name="n", cmd="true", **{field: "2"})


@pytest.mark.parametrize("key", ["1A", "A-B", "", "A B"])
def test_env_keys_must_be_variable_names(key: str) -> None:
    with pytest.raises(ValidationError, match="^env: "):
        check_env({key: "x"})


def test_env_values_must_be_strings_or_numbers() -> None:
    with pytest.raises(ValidationTypeError, match=r"^env\[A\]: "):
        check_env({"A": [1]})
    assert check_env({"A": 1, "B": "x"}) == {"A": "1", "B": "x"}


def test_args_must_be_msgpack_serialisable() -> None:
    with pytest.raises(ValidationTypeError, match="^args: "):
        build_run(name="n", task="tests.tasks:add", args=[object()])
    with pytest.raises(ValidationTypeError, match="^kwargs: "):
        build_run(name="n", task="tests.tasks:add", kwargs={"a": {1, 2}})


def test_payload_limit_is_512_kib() -> None:
    spec = build_run(name="n", task="tests.tasks:add", args=["x" * (512 * 1024)])
    with pytest.raises(ValidationError, match="^args: .*512 KiB"):
        spec.job_fields("default", 0.0)
    small = build_run(name="n", task="tests.tasks:add", args=["x" * (500 * 1024)])
    assert small.job_fields("default", 0.0).data


def test_exactly_one_of_cmd_and_task() -> None:
    with pytest.raises(ValidationError, match="^cmd: "):
        build_run(name="n")
    with pytest.raises(ValidationError, match="^cmd: "):
        build_run(name="n", cmd="true", task="tests.tasks:add")


def test_task_name_must_be_module_colon_function() -> None:
    with pytest.raises(ValidationError, match="^task: "):
        build_run(name="n", task="os.system")
    with pytest.raises(ValidationTypeError, match="^task: "):
        build_run(name="n", task=lambda: 1)


def test_cmd_args_split_as_a_shell_would_never_through_one() -> None:
    spec = build_run(name="n", cmd="echo", args="'hello world' $HOME; ls")
    assert spec.argv == ["echo", "hello world", "$HOME;", "ls"]
    with pytest.raises(ValidationError, match="^args: "):
        split_args("'unterminated")


def test_retries_range() -> None:
    with pytest.raises(ValidationError, match="^retries: "):
        build_run(name="n", cmd="true", retries=-1)
    with pytest.raises(ValidationTypeError, match="^retries: "):
        build_run(name="n", cmd="true", retries=1.5)


def test_meta_takes_a_name_and_prerun_fatal_without_a_new_spec() -> None:
    from sessionq.common.jobhash import parse_meta

    spec = build_run(name="task", task="pkg.mod:fn", args=[1])
    assert parse_meta(spec.meta())["name"] == "task"
    meta = parse_meta(spec.meta("renamed", True))
    assert meta["name"] == "renamed" and meta["prerun_fatal"] is True
    assert "prerun_fatal" not in parse_meta(spec.meta("renamed", False))


def test_with_args_encodes_the_same_call_with_other_arguments() -> None:
    from sessionq.common.jobhash import parse_job_data

    spec = build_run(name="t", task="pkg.mod:fn", args=[1], kwargs={"k": "v"})
    assert parse_job_data(spec.with_args(["other", 2], "iterable[0]")) == (
        "pkg.mod:fn", ["other", 2], {"k": "v"},
    )  # fmt: skip
    with pytest.raises(ValidationTypeError, match=r"^iterable\[3\]: "):
        spec.with_args([object()], "iterable[3]")


def _batch_specs() -> list[RunSpec]:
    return [
        build_run(name="n", task="tests.tasks:add"),
        build_run(name="n", cmd=["echo", "hi"], env={"A": "1", "B": "é"}, cores=2, ram=1.5),
        build_run(name="n", task="tests.tasks:add", gpu=1, replica_id=3, replica_count=4),
        build_run(name="n", cmd="ls", env={"name": ""}),  # the bytes of an empty name, again
    ]


@pytest.mark.parametrize("fatal", [True, False])
def test_metas_of_a_batch_are_the_meta_of_each_name(fatal: bool) -> None:
    names = ["a", "x" * 31, "x" * 32, "x" * 63, "ünï", "r-1.b_2"]
    for spec in _batch_specs():
        assert spec.metas(names, fatal) == [spec.meta(n, fatal) for n in names]
    assert _batch_specs()[0].metas([], fatal) == []


def test_surely_fits_only_a_payload_that_check_size_takes() -> None:
    limit = 512 * 1024
    names = ["a", "x" * 31, "x" * 32, "x" * 63, "é" * 40]
    said_yes = 0
    for spec in _batch_specs():
        for name in names:
            meta = spec.meta(name, True)
            for room in range(-300, 301, 7):  # the args' size around the limit
                size = limit - len(spec.data) - len(meta) + room
                pad = "x" * max(size, 0)
                big = (
                    replace(spec, argv=[*spec.argv, pad])
                    if spec.is_command
                    else replace(spec, args=[pad])
                )
                if big.surely_fits(name, True):
                    said_yes += 1
                    big.check_size(big.meta(name, True))  # must not raise
        assert spec.surely_fits(names[-1], False)  # far from the limit: no need to pack
    assert said_yes > 0


def test_surely_fits_packs_a_meta_msgpack_refuses_and_raises() -> None:
    spec = build_run(name="n", task="tests.tasks:add", cores=2**70)
    with pytest.raises(CodecError):
        spec.surely_fits("a", True)
