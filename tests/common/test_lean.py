"""A script's source holds what its body reaches of the prologue and prelude, and no more
(common/scripts/lean.py): Redis runs all of a source on every call."""

from __future__ import annotations

from importlib import resources

import pytest

from sessionq.common.keys import Keys
from sessionq.common.scripts import lean
from sessionq.common.scripts.contracts import CONTRACTS

LUA = resources.files("sessionq.common") / "lua"
PRELUDE = (LUA / "prelude.lua").read_text()
BUILDERS = {name: Keys("sq:").session for c in CONTRACTS.values() for name in c.builders}


def test_names_are_read_from_code_only() -> None:
    lua = """
    -- emit(S) in a comment
    local t = {flush = 1, 'move', [k] = v}  --[[ map(x) ]]
    local s = "set_status(" .. a.field .. b:method() .. c .. [[wake()]]
    """
    assert lean.names_in(lua) == {"local", "t", "k", "v", "s", "a", "b", "c"}


def test_a_prelude_statement_is_split_with_its_comments() -> None:
    pieces = {p.defines: p for p in lean.split(PRELUDE)}
    assert pieces[("emit",)].text.startswith("-- S = {sid, session, history, chan}: queue")
    assert {"judge_ends", "heard", "P", "G"} <= pieces[("flush",)].uses
    assert ("judge_ends",) in pieces  # its forward declaration, and its assignment


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_a_source_defines_what_its_body_uses_and_starts_with_the_shebang(name: str) -> None:
    contract = CONTRACTS[name]
    body = (LUA / f"{name}.lua").read_text()
    source = contract.source(body, PRELUDE, BUILDERS)
    assert source.startswith(contract.shebang + "\n")
    defined = {n for p in [*contract.pieces(BUILDERS), *lean.split(PRELUDE)] for n in p.defines}
    kept = source[: -len(body)]
    for used in lean.names_in(body) & defined:
        assert f"local {used}" in kept or f"function {used}(" in kept, used


def test_a_small_script_leaves_the_event_machinery_out() -> None:
    body = (LUA / "heartbeat.lua").read_text()
    source = CONTRACTS["heartbeat"].source(body, PRELUDE, BUILDERS)
    for absent in ("local function flush", "local function emit", "local function start"):
        assert absent not in source
    assert "local function redis_now_ms" in source
