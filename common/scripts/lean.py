"""Which parts of the generated prologue and of prelude.lua a script's body needs.

Redis cannot keep a script's functions between calls: every call runs the whole source
again, so each `local function` of the prelude is a closure made anew, each table a table
built anew, whether the body uses it or not. A script's source is therefore its body and
only the top-level definitions it reaches, transitively, in their original order.

The prelude is split into top-level statements: one starts on a line at column 0 that is
neither a comment nor an `end` (the comment lines just above go with it). A statement
defines the names of its `local` (or `local function`); an assignment to a name or a field
(`judge_ends = function`, `G.sessions = {}`) goes with the definition of that name. Names are
found by a small Lua lexer that skips comments and strings, so a word in a comment or a
string pulls nothing in; a name used in a way it cannot see (none are: Redis scripts have no
globals, and `_G` is never used) would fail the script when it runs - every script runs in
the test suite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LONG_OPEN = re.compile(r"\[(=*)\[")
_LOCAL = re.compile(r"local\s+(?:function\s+)?([A-Za-z_][\w\s,]*?)\s*(?:=|\(|$)")
_KEY = re.compile(r"\s*=(?!=)")
_ASSIGN = re.compile(r"([A-Za-z_]\w*)\s*(?:\.|\[|=)")


def names_in(lua: str) -> set[str]:
    """Every name `lua`'s code reads or defines: not in its comments or strings, not a
    field (after `.` or `:`), not a key of a table constructor (`{name = ...}`)."""
    out: set[str] = set()
    braces = 0
    last = ""  # the code character before the one at i (comments skipped)
    i, n = 0, len(lua)
    while i < n:
        c = lua[i]
        if c == "-" and lua.startswith("--", i):
            long = _LONG_OPEN.match(lua, i + 2)
            if long:
                end = lua.find("]" + long.group(1) + "]", long.end())
                i = n if end < 0 else end + len(long.group(1)) + 2
            else:
                end = lua.find("\n", i)
                i = n if end < 0 else end + 1
        elif c in "'\"":
            i += 1
            while i < n and lua[i] != c:
                i += 2 if lua[i] == "\\" else 1
            i += 1
            last = c
        elif c == "[" and _LONG_OPEN.match(lua, i):
            long = _LONG_OPEN.match(lua, i)
            assert long is not None
            end = lua.find("]" + long.group(1) + "]", long.end())
            i = n if end < 0 else end + len(long.group(1)) + 2
            last = "]"
        elif c.isalpha() or c == "_":
            word = _NAME.match(lua, i)
            assert word is not None
            i = word.end()
            field = last in (".", ":")
            key = braces > 0 and last in ("{", ",") and _KEY.match(lua, i) is not None
            if not (field or key):
                out.add(word.group())
            last = "a"
        elif c.isdigit():  # a number (1e5, 0x1F): not a name
            while i < n and (lua[i].isalnum() or lua[i] == "."):
                i += 1
            last = "0"
        else:
            braces += (c == "{") - (c == "}")
            if not c.isspace():
                last = ".." if c == "." and last == "." and lua[i - 1] == "." else c
            i += 1
    return out


@dataclass(frozen=True, slots=True)
class Piece:
    """A top-level statement: the names it defines (or, for an assignment, goes with) and
    its text."""

    defines: tuple[str, ...]
    text: str
    uses: frozenset[str]


def piece(defines: Iterable[str], text: str) -> Piece:
    return Piece(tuple(defines), text, frozenset(names_in(text)))


def split(lua: str) -> list[Piece]:
    """`lua` (the prelude) as its top-level statements, in order."""
    return list(_split(lua))


@cache
def _split(lua: str) -> tuple[Piece, ...]:
    """(split, once per process: every script's source splits the same prelude, and lexing
    it is most of the time a worker takes to register its scripts)"""
    pieces: list[Piece] = []
    comments: list[str] = []
    current: list[str] = []

    def close() -> None:
        if current:
            text = "\n".join(current) + "\n"
            pieces.append(piece(_defined(_first_code(current)), text))
            current.clear()

    for line in lua.splitlines():
        starts = bool(line) and not line[0].isspace() and not line.startswith(("--", "end"))
        if starts:
            close()
            current.extend(comments)
            comments.clear()
            current.append(line)
        elif line.startswith("--"):  # goes with what follows: the next statement's, or
            comments.append(line)  # a line of the current one's
        elif current:
            current.extend(comments)
            comments.clear()
            current.append(line)
    close()
    return tuple(pieces)


def _first_code(lines: Sequence[str]) -> str:
    return next(line for line in lines if not line.startswith("--"))


def _defined(line: str) -> tuple[str, ...]:
    local = _LOCAL.match(line)
    if local:
        return tuple(name.strip() for name in local.group(1).split(",") if name.strip())
    assign = _ASSIGN.match(line)
    return (assign.group(1),) if assign else ()


def needed(pieces: Sequence[Piece], body: str) -> list[Piece]:
    """The pieces `body` reaches (transitively), in their order."""
    by_name: dict[str, list[int]] = {}
    for i, p in enumerate(pieces):
        for name in p.defines:
            by_name.setdefault(name, []).append(i)
    keep: set[int] = set()
    todo = list(names_in(body))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for i in by_name.get(name, ()):
            if i not in keep:
                keep.add(i)
                todo.extend(pieces[i].uses)
    return [p for i, p in enumerate(pieces) if i in keep]
