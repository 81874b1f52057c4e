"""Every Lua script matches its declared contract (STYLE.md "Lua scripts: a declared
contract"): the body reads keys and arguments only by the names the contract declares, the
names the Python packer lays out are what the generated prologue reads in Redis, and the
status and state words of the scripts are the enums'."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources

import pytest
from redis import Redis
from redis.commands.core import Script

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.keys import Layout
from sessionq.common.redisserver import RedisServer
from sessionq.common.scripts import Scripts, lean, library, transport
from sessionq.common.scripts.base import (
    PUBLISH_LUA,
    SHARDED_PUBLISH_LUA,
    ScriptsBase,
    _lua_file,
)
from sessionq.common.scripts.contract import NUMBER, PREFIX_MARK, Contract
from sessionq.common.scripts.contracts import CONTRACTS, GLOBAL_KEYS
from sessionq.common.settings import Settings
from sessionq.common.vocabulary import Status, TaskState
from tests.conftest import ON_CLUSTER

LUA = resources.files("sessionq.common") / "lua"
PRELUDE = (LUA / "prelude.lua").read_text()


@pytest.fixture(scope="module")
def redis_url(redis_url: str) -> Iterator[str]:
    """The target's Redis; on the cluster target a plain Redis of this module's own: the
    contract is the same on every target, and its probes send keys named after what they
    are, of many slots (the partitions target still has the builders of a partitioned
    namespace checked)."""
    if not ON_CLUSTER:
        yield redis_url
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


def body(name: str) -> str:
    return (LUA / f"{name}.lua").read_text()


def code(text: str) -> str:
    """Lua without its comments."""
    return re.sub(r"--[^\n]*", "", text)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_the_body_reads_only_declared_names(name: str) -> None:
    contract, text = CONTRACTS[name], code(body(name))
    assert "KEYS[" not in text and "ARGV[" not in text, "read by name, not position"
    # the keys, arguments and key builders its body reads, itself or through the prelude's
    # functions it reaches
    reached = code("".join(p.text for p in lean.needed(lean.split(PRELUDE), text)))
    used_keys = set(re.findall(r"\bK\.(\w+)", text + reached))
    used_args = set(re.findall(r"\bA\.(\w+)", text + reached))
    assert used_keys <= set(contract.keys), used_keys - set(contract.keys)
    declared_args = {n for n, _ in contract.args} | {n for n, _ in contract.tail}
    assert used_args <= declared_args, used_args - declared_args
    one_field = {f"{b.name}_{b.fields[0]}" for b in contract.key_blocks if b.size == 1}
    assert (
        set(re.findall(r"\bKB\.(\w+)", text)) <= {b.name for b in contract.key_blocks} | one_field
    )
    assert set(re.findall(r"\bAB\.(\w+)", text)) <= {b.name for b in contract.arg_blocks}
    assert set(re.findall(r"\bkey_(\w+)\(", text + reached)) <= set(contract.builders)
    # and nothing declared goes unused (the global keys are read by prelude's load_globals)
    globals_read = "load_globals()" in text
    unused = set(contract.keys) - used_keys - (set(GLOBAL_KEYS) if globals_read else set())
    assert not unused, f"declared but never read: {sorted(unused)}"


def test_the_prelude_reads_nothing_by_position() -> None:
    assert "KEYS[" not in code(PRELUDE) and "ARGV[" not in code(PRELUDE)


def test_status_and_state_words_are_the_enums() -> None:
    statuses = {s.value for s in Status}
    states = {s.value for s in TaskState} | {"finished"}  # RQ's word for succeeded
    for name in [*CONTRACTS, "prelude"]:
        text = code(body(name))
        for word in re.findall(r"'([A-Z][a-z]+)'", text):
            assert word in statuses, f"{name}.lua: status {word!r} is not a Status"
        writes = "\n".join(line for line in text.splitlines() if "'HSET'" in line)
        for word in re.findall(r"'(?:state|status)', '(\w+)'", writes):
            assert word in states, f"{name}.lua: state {word!r} is not a TaskState"
        for pair in re.findall(r"move\(\w+, '(\w+)', '(\w+)'", text):
            assert set(pair) <= states, f"{name}.lua: move {pair}"


def _layout(contract: Contract) -> tuple[list[str], list[str], list[str], list[str]]:
    """Keys and args named after what they are, as the packer lays them out, and the Lua
    expressions that must read each of them back (two blocks of each kind)."""
    fixed_keys = {n: f"K:{n}" for n in contract.keys}
    key_blocks = {b.name: [[f"KB:{b.name}{i}:{f}" for f in b.fields] for i in (1, 2)]
                  for b in contract.key_blocks}  # fmt: skip
    args = {n: (f"{7 + i}" if kind == NUMBER else f"A:{n}")
            for i, (n, kind) in enumerate(contract.args)}  # fmt: skip
    for block in (*contract.key_blocks, *contract.arg_blocks):
        for count in block.count:  # two blocks of each kind, whatever counts them
            args[count] = str(2 // len(block.count))
    arg_blocks = {b.name: [[f"AB:{b.name}{i}:{f}" for f in b.fields] for i in (1, 2)]
                  for b in contract.arg_blocks}  # fmt: skip
    tail = {n: (f"{90 + i}" if kind == NUMBER else f"T:{n}")
            for i, (n, kind) in enumerate(contract.tail)}  # fmt: skip
    keys = contract.pack_keys(fixed_keys, key_blocks)
    argv = [str(a) for a in contract.pack_args(args, arg_blocks, tail)]
    exprs = [f"K.{n}" for n in contract.keys] + [f"A.{n}" for n, _ in contract.args]
    expected = list(fixed_keys.values()) + [args[n] for n, _ in contract.args]
    for b in contract.key_blocks:
        for i in (1, 2):
            exprs += [f"KB.{b.name}({i}).{f}" for f in b.fields]
            expected += key_blocks[b.name][i - 1]
            if b.size == 1:  # its value, with no table made
                exprs.append(f"KB.{b.name}_{b.fields[0]}({i})")
                expected += key_blocks[b.name][i - 1]
    for b in contract.arg_blocks:
        for i in (1, 2):
            exprs += [f"AB.{b.name}({i}).{f}" for f in b.fields]
            expected += arg_blocks[b.name][i - 1]
    exprs += [f"A.{n}" for n, _ in contract.tail]
    expected += list(tail.values())
    return keys, argv, exprs, expected


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_the_packer_and_the_prologue_agree_in_redis(
    name: str, redis: Redis, settings: Settings
) -> None:
    contract = CONTRACTS[name]
    scripts = Scripts(redis, settings)
    keys, argv, exprs, expected = _layout(contract)
    probe = contract.prologue(scripts.builders) + "return {" + ", ".join(
        f"tostring({e})" for e in exprs) + "}"  # fmt: skip
    got = [v.decode() for v in redis.eval(probe, len(keys), *keys, *argv)]
    assert got == expected


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_every_script_compiles(
    name: str, redis: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ScriptsBase, "use_functions", False)  # (the EVALSHA path)
    script = Scripts(redis, settings).script(name)
    assert isinstance(script, Script)
    sha = redis.script_load(script.script)
    assert redis.script_exists(sha) == [True]


def test_the_library_defines_every_script_with_its_flags(redis: Redis, settings: Settings) -> None:
    libraries = set()
    for partitions in (0, 4):
        layout = replace(settings, partitions=partitions)
        redis.delete(Layout.of(layout).partitions_key())  # (a namespace keeps one count)
        scripts = Scripts(redis, layout).parts[0]
        functions = {name: scripts.script(name) for name in CONTRACTS}
        assert all(isinstance(f, transport.Function) for f in functions.values())
        library = transport.library_of(functions["run"])
        [listed] = sync_reply(redis.function_list(library=library))
        got = {codec.text(f[1]): [codec.text(flag) for flag in f[5]] for f in listed[5]}
        assert got == {transport.handle(f): list(CONTRACTS[name].flags)
                       for name, f in functions.items()}  # fmt: skip
        libraries.add(library)
    # named by a hash of the source: each layout (and prefix) makes another library, and
    # both live on one server side by side
    assert len(libraries) == 2
    assert all(sync_reply(redis.function_list(library=library)) for library in libraries)


def _library(redis: Redis, settings: Settings, contracts: dict[str, Contract]) -> str:
    bodies = {name: _lua_file(name) for name in CONTRACTS}
    builders = Scripts(redis, settings).builders
    return library.library(contracts, bodies, _lua_file("prelude"), builders)[0]


def test_a_change_of_flags_alone_names_another_library(redis: Redis, settings: Settings) -> None:
    source = _library(redis, settings, CONTRACTS)
    flagged = dict(CONTRACTS, took=replace(CONTRACTS["took"], flags=()))
    other = _library(redis, settings, flagged)
    assert source.split("\n", 1)[0] != other.split("\n", 1)[0], "another library's name"


def test_the_library_of_a_clustered_namespace_loads(redis: Redis, settings: Settings) -> None:
    """Its prelude's pub/sub verbs are the sharded ones (ScriptsBase._prelude)."""
    prelude = _lua_file("prelude").replace(PUBLISH_LUA, SHARDED_PUBLISH_LUA)
    assert prelude != _lua_file("prelude")
    bodies = {name: _lua_file(name) for name in CONTRACTS}
    source, _ = library.library(CONTRACTS, bodies, prelude, Scripts(redis, settings).builders)
    name = source.split("\n", 1)[0].split("name=", 1)[1]
    try:
        assert redis.execute_command("FUNCTION", "LOAD", source) == name.encode()
    finally:
        redis.execute_command("FUNCTION", "DELETE", name)


# the prelude's tables made once, for every call: constants no code writes to
PRELUDE_CONSTANTS = {
    "ENDED",
    "LIVE",
    "TERMINAL",
    "RQ_STATUS",
    "INTSTR",
    "PK_MT",
    "NUMSTR_MT",
    "FIXSTR",
}


def test_every_prelude_table_is_made_anew_for_each_call_but_the_constants(
    redis: Redis, settings: Settings
) -> None:
    """What a call writes into a prelude table is not seen by the next: each table is made
    per call (the library's `fresh`), unless named here as a constant - a new one is
    classified on purpose. And each call starts with no contract blocks of the last."""
    source = _library(redis, settings, CONTRACTS)
    fresh = re.split(
        r"^end$", source.split("local function fresh()\n", 1)[1], maxsplit=1, flags=re.M
    )[0]
    tables = re.findall(r"^local (\w+)\s*=\s*(?:\{|setmetatable)", _lua_file("prelude"), re.M)
    assert PRELUDE_CONSTANTS <= set(tables)
    for name in tables:
        made_per_call = re.search(rf"^{name}\s*=", fresh, re.M) is not None
        assert made_per_call == (name not in PRELUDE_CONSTANTS), name
    calls = re.findall(r"^call_\w+ = function\(keys, args\)\n.*\n(.*)\n", source, re.M)
    assert calls and all(c == "K, A, KB, AB, PFX = nil, nil, nil, nil, nil" for c in calls)
    assert len(calls) == len(CONTRACTS)
    # the tables of K and A are made once per script: every call writes each of their names
    for contract in CONTRACTS.values():
        per_call = contract.bound()[1]
        for name in (*contract.keys, *(a for a, _ in (*contract.args, *contract.tail))):
            assert re.search(rf"^[KA]_\.{name} = ", per_call, re.M), (contract.name, name)


def test_key_builders_and_run_ids_are_keys_py_s(redis: Redis, settings: Settings) -> None:
    scripts = Scripts(redis, settings)
    contract = CONTRACTS["run"]
    given = {b: ("ab12-7", "q.1")[: len(inspect.signature(scripts.builders[b]).parameters)]
             for b in contract.builders}  # fmt: skip
    exprs = [f"key_{b}({', '.join(repr(a) for a in args)})" for b, args in given.items()]
    exprs += ["session_of('ab-12-7')", "tostring(run_number('ab-12-7'))"]
    probe = contract.prologue(scripts.builders) + "return {" + ", ".join(exprs) + "}"
    keys, argv, _, _ = _layout(contract)
    # partitioned, the builders' prefix is the partition's, taken from the call's first key
    pfx = scripts.keys.prefix if scripts.layout.partitioned else ""
    got = [v.decode() for v in redis.eval(probe, len(keys), pfx + keys[0], *keys[1:], *argv)]
    want = [scripts.builders[b](*args).replace(PREFIX_MARK, pfx) for b, args in given.items()]
    assert got == [*want, "ab-12", "7"]
