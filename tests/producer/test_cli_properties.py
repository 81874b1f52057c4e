"""The CLI given any arguments (hypothesis): bad input is exit status 2 and one line on stderr,
never a traceback (SPEC §6)."""

from __future__ import annotations

import math
import string
from typing import Any

from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionq.producer.cli import cli

NAME_START = string.ascii_letters + string.digits
NAME_CHARS = NAME_START + "._-"
KIND_START = string.ascii_lowercase
KIND_CHARS = KIND_START + string.digits + "-"
ENV_START = string.ascii_letters + "_"
ENV_CHARS = ENV_START + string.digits

texts = st.text(max_size=12)
numberish = st.sampled_from(["0", "-1", "1", "2.5", "nan", "inf", "-inf", "1e400", "x", ""])
OPTIONS: dict[str, st.SearchStrategy[str]] = {
    "--image": texts,
    "--cores": numberish | texts,
    "--ram": numberish | texts,
    "--gpu": numberish | texts,
    "--kind": st.sampled_from(["headless", "notebook", "Bad", "1x"]) | texts,
    "--cmd": st.sampled_from(["true", "echo hi", "'open", ""]) | texts,
    "--args": st.sampled_from(["1 2", "'open", '"a b"']) | texts,
    "--env": st.sampled_from(["A=1", "1A=x", "NOEQUALS", "=v"]) | texts,
    "--replicas": st.sampled_from(["1", "2", "0", "-3", "10001", "many"]),
    "--task": st.sampled_from(["tests.tasks:add", "os.system", "m:f", ""]) | texts,
    "--kwargs": st.sampled_from(['{"a": 1}', "[1]", "{nope", "null", '{"a": 1e999}']) | texts,
    "--queue": st.sampled_from(["default", "gpu", "control", "x.commands", "a b"]) | texts,
    "--timeout": numberish | texts,
    "--retries": st.sampled_from(["0", "3", "-1", "1001", "1.5"]) | texts,
    "--bogus": texts,
}
option_pairs = st.lists(
    st.tuples(st.sampled_from(sorted(OPTIONS)), st.data()), max_size=5
)  # fmt: skip


def is_name(s: str) -> bool:
    return 1 <= len(s) <= 63 and s[0] in NAME_START and all(c in NAME_CHARS for c in s)


def run(redis_url: str, args: list[str]) -> Result:
    return CliRunner().invoke(cli, ["--url", redis_url, "--user", "prop", *args])


def assert_one_line_error(result: Result) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("sessionq: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@settings(max_examples=60, deadline=None)
@given(
    command=st.sampled_from(["create", "ls", "destroy-with"]),
    name=st.sampled_from(["ok", "bad name", "", "-x"]) | texts,
    pairs=option_pairs,
    extra=st.lists(texts, max_size=2),
)
def test_any_arguments_exit_0_or_2_with_one_line(
    redis_url: str, command: str, name: str, pairs: list[tuple[str, Any]], extra: list[str]
) -> None:
    args = [command]
    if command != "ls":
        args.append(name)
    for option, data in pairs:
        if command != "create" and option not in ("--kind", "--bogus"):
            option = "--status"
        args += [option, data.draw(OPTIONS.get(option, texts))]
    result = run(redis_url, args + extra)
    if command == "destroy-with" and result.exit_code == 1:  # a good pattern matching nothing
        assert result.stderr.startswith("sessionq: error: no sessions matched ")
        assert result.stderr.count("\n") == 1 and result.stdout == ""
    elif result.exit_code != 0:
        assert_one_line_error(result)


# -- each field made bad in an otherwise good `create`: always 2, naming the field ---------------
def bad_number(low: float = 0.0) -> st.SearchStrategy[str]:
    return st.floats().filter(lambda v: not math.isfinite(v) or v <= low).map(repr) | st.just("x")


BAD: dict[str, tuple[st.SearchStrategy[str], str]] = {
    "name": (texts.filter(lambda s: not is_name(s) and not s.startswith("-")), "name: "),
    "--cores": (bad_number(), "cores"),
    "--ram": (bad_number(), "ram"),
    "--gpu": (bad_number(), "gpu"),
    "--timeout": (bad_number(), "timeout"),
    "--replicas": ((st.integers(max_value=0) | st.integers(min_value=10_001)).map(str), "replicas"),
    "--retries": ((st.integers(max_value=-1) | st.integers(min_value=1001)).map(str), "retries"),
    "--kind": (
        texts.filter(
            lambda s: not (0 < len(s) <= 32 and s[0] in KIND_START and set(s) <= set(KIND_CHARS))
        ),
        "kind",
    ),
    "--env": (
        texts.filter(lambda s: "=" not in s or not s.split("=")[0])
        | st.tuples(
            texts.filter(
                lambda k: (
                    bool(k)
                    and (k[0] not in ENV_START or not set(k) <= set(ENV_CHARS))
                    and "=" not in k
                )
            ),
            texts,
        ).map("=".join),  # fmt: skip
        "env",
    ),
    "--kwargs": (
        st.sampled_from(["{nope", "[1]", "3", '"s"', '{"a": 123456789012345678901234567890}']),
        "kwargs",
    ),
    "--queue": (st.sampled_from(["control", "x.commands", "a b", "", ".q"]), "queue"),
    "--task": (st.sampled_from(["os.system", "", "m:", ":f", "a b:c"]), "task"),
}


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(sorted(BAD)), data=st.data())
def test_one_bad_field_is_exit_2_naming_it(redis_url: str, field: str, data: Any) -> None:
    strategy, says = BAD[field]
    bad = str(data.draw(strategy))
    good = {"name": "ok", "--task": "tests.tasks:add", "--args": "1 2", "--replicas": "1"}
    good[field] = bad
    args = ["create", good.pop("name")]
    for option, value in good.items():
        args += [f"{option}={value}"]  # one token: a value that starts with "-" stays a value
    result = run(redis_url, args)
    assert_one_line_error(result)
    assert says in result.stderr or "Invalid value" in result.stderr, result.stderr
