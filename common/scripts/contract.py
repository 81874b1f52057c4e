"""The declared Python<->Lua protocol: each script's keys, arguments and shared words, once.

A `Contract` names a script's keys (fixed ones, then repeated blocks whose counts are
arguments), its arguments (fixed ones, repeated blocks, then a tail), and the key builders
it may use for keys it finds itself (a claimed run's job key). From it come both sides:

- the Lua prologue put before the script (`prologue`; `source` keeps of it, and of the
  shared prelude, only what the body uses, after the Redis 7 shebang with the script's
  `flags`): named locals `K.<key>` and `A.<arg>`
  (numbers already `tonumber`ed), a function per block that returns the block's keys or
  arguments by name (`KB.run(i)`, `AB.finish(i)`; a one-field block's value also as
  `KB.job_job(i)`, no table made), key builders made from keys.py's own
  names (`key_session(sid)`), the run-id rule, and the vocabulary of the enums;
- the Python packer (`pack_keys`, `pack_args`), which lays a call out by the same names.

The body of a script never reads `KEYS[n]` or `ARGV[n]`; tests/common/test_contract.py
checks every script against its declaration.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sessionq.common.keys import RUN_ID_SEPARATOR
from sessionq.common.scripts import lean
from sessionq.common.vocabulary import Outcome, Status, StepResult, TaskState

# the words every script shares with Python, as Lua lists in the enums' order
VOCABULARY: dict[str, type[StrEnum]] = {"STATUS": Status, "TASK_STATE": TaskState,
                                         "OUTCOME": Outcome, "STEP_RESULT": StepResult}  # fmt: skip

NUMBER = "n"  # an argument Lua receives as a number
TEXT = "s"  # an argument Lua receives as a string


@dataclass(frozen=True, slots=True)
class Block:
    """A group of keys or arguments repeated `count` times (`count`: the names of the
    arguments whose sum is the number of blocks)."""

    name: str
    fields: tuple[str, ...]
    count: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.fields)


@dataclass(frozen=True, slots=True)
class Contract:
    """One script's protocol. `args` maps a name to NUMBER or TEXT; `key_blocks` and
    `arg_blocks` follow the fixed keys and arguments in order; `tail` arguments come after
    the argument blocks; `extra_keys` says keys may follow the key blocks, addressed by the
    index the packer returns for them; `builders` names the key builders (keys.py methods
    taking one id) the script may use; `flags` are its Redis 7 script flags (`shebang`).
    Every script shares VOCABULARY's words."""

    name: str
    keys: tuple[str, ...]
    args: tuple[tuple[str, str], ...]
    key_blocks: tuple[Block, ...] = ()
    arg_blocks: tuple[Block, ...] = ()
    tail: tuple[tuple[str, str], ...] = ()
    extra_keys: bool = False
    builders: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    _arg_index: dict[str, int] = field(init=False, repr=False, compare=False)
    _key_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {name: i for i, (name, _) in enumerate(self.args)}
        object.__setattr__(self, "_arg_index", index)
        object.__setattr__(self, "_key_names", frozenset(self.keys))
        for block in (*self.key_blocks, *self.arg_blocks):
            for count in block.count:
                if count not in index:
                    raise ValueError(f"{self.name}: block {block.name} counts by unknown {count}")

    # -- the Python side ---------------------------------------------------------------
    def arg_position(self, name: str) -> int:
        """0-based position of a fixed argument."""
        return self._arg_index[name]

    def pack_keys(
        self,
        fixed: Mapping[str, str],
        blocks: Mapping[str, Sequence[Sequence[str] | str]] | None = None,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """The KEYS of a call: the fixed keys by name, each block's keys in its field order
        (a one-field block's may come flat, a key each), then `extra` keys (see
        `extra_index`)."""
        out = self.fixed_keys(fixed)
        blocks = blocks or {}
        for block in self.key_blocks:
            given = blocks.get(block.name, ())
            size = len(block.fields)
            if size == 1 and all(type(one) is str for one in given):
                out.extend(given)  # type: ignore[arg-type]  # str keys, checked just above
                continue
            for one in given:
                if isinstance(one, str) or len(one) != size:
                    raise ValueError(f"{self.name}: a {block.name} block holds {size}")
                out.extend(one)
        if extra and not self.extra_keys:
            raise ValueError(f"{self.name} takes no extra keys")
        out.extend(extra)
        return out

    def fixed_keys(self, fixed: Mapping[str, str]) -> list[str]:
        """The fixed KEYS of a call, by name (the head of `pack_keys`)."""
        if fixed.keys() != self._key_names:
            raise ValueError(f"{self.name}: keys {sorted(set(self.keys) ^ fixed.keys())}")
        return [fixed[name] for name in self.keys]

    def block(self, name: str, values: Mapping[str, Any]) -> list[Any]:
        """One key or argument block of `name`, laid out from its fields by name."""
        for block in (*self.key_blocks, *self.arg_blocks):
            if block.name == name and values.keys() == set(block.fields):
                return [values[field] for field in block.fields]
        raise ValueError(f"{self.name}: no {name} block with fields {sorted(values)}")

    def extra_index(self, block_counts: Mapping[str, int]) -> int:
        """The 1-based KEYS index of the first extra key, given how many of each key block."""
        return 1 + len(self.keys) + sum(b.size * block_counts.get(b.name, 0)
                                        for b in self.key_blocks)  # fmt: skip

    def pack_args(
        self,
        fixed: Mapping[str, Any],
        blocks: Mapping[str, Sequence[Sequence[Any]]] | None = None,
        tail: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        """The ARGV of a call, laid out as declared."""
        if fixed.keys() != self._arg_index.keys():
            raise ValueError(f"{self.name}: args {sorted(set(self._arg_index) ^ fixed.keys())}")
        out = [fixed[name] for name, _ in self.args]
        blocks = blocks or {}
        for block in self.arg_blocks:
            for one in blocks.get(block.name, ()):
                if len(one) != block.size:
                    raise ValueError(f"{self.name}: a {block.name} block holds {block.size}")
                out.extend(one)
        tail = tail or {}
        out.extend(tail[name] for name, _ in self.tail)
        return out

    # -- the Lua side ------------------------------------------------------------------
    @property
    def shebang(self) -> str:
        """The script's first line (Redis 7): its flags, checked before it runs - without
        `allow-oom`, a script that may write is refused whole when Redis is over maxmemory,
        instead of being stopped at its first write (and let past the limit after it)."""
        return "#!lua" + (f" flags={','.join(self.flags)}" if self.flags else "")

    def prologue(self, builders: Mapping[str, Callable[..., str]]) -> str:
        """The whole Lua prologue (see the module docstring); a script's own source has only
        the parts its body uses (`source`)."""
        return "".join(p.text for p in self.pieces(builders))

    def source(self, body: str, prelude: str, builders: Mapping[str, Callable[..., str]]) -> str:
        """The script's source: its shebang, then the parts of the prologue and of `prelude`
        that `body` reaches (lean.py: Redis runs all of a source on every call), then
        `body`."""
        header, *pieces = self.pieces(builders)
        parts = lean.needed([*pieces, *lean.split(prelude)], body)
        return "".join([self.shebang + "\n", header.text, *(p.text for p in parts), body])

    def pieces(self, builders: Mapping[str, Callable[..., str]]) -> list[lean.Piece]:
        """The prologue as top-level Lua statements, each with the names it defines."""
        out = [lean.piece((), f"-- contract of {self.name}.lua: generated by "
                              "sessionq.common.scripts (contract.py); the body reads only "
                              "these names\n")]  # fmt: skip
        keys = (f"{name} = KEYS[{i}]" for i, name in enumerate(self.keys, start=1))
        out.append(lean.piece(["K"], "local K = {" + ", ".join(keys) + "}\n"))
        a = ["local A = {" + ", ".join(
            f"{name} = {_lua_arg(f'ARGV[{i}]', kind)}"
            for i, (name, kind) in enumerate(self.args, start=1)) + "}"]  # fmt: skip
        if self.tail:
            offset = _offset_expr(len(self.args), self.arg_blocks)
            for i, (name, kind) in enumerate(self.tail, start=1):
                a.append(f"A.{name} = {_lua_arg(f'ARGV[{offset} + {i}]', kind)}")
        out.append(lean.piece(["A"], "\n".join(a) + "\n"))
        for table, array, blocks, fixed in (
            ("KB", "KEYS", self.key_blocks, len(self.keys)),
            ("AB", "ARGV", self.arg_blocks, len(self.args)),
        ):
            if blocks:
                lines = _blocks(table, array, blocks, fixed)
                out.append(lean.piece([table], "\n".join(lines) + "\n"))
        if self.extra_keys:
            offset = _offset_expr(len(self.keys), self.key_blocks)
            out.append(lean.piece(["KX"], f"local function KX(i) return KEYS[i] end  "
                                          f"-- extra keys: from {offset} + 1\n"))  # fmt: skip
        if any(PREFIX_MARK in builders[n](*MARKS[: _arity(builders[n])]) for n in self.builders):
            out.append(lean.piece(["PFX"], PARTITION_PREFIX_LUA + "\n"))
        for name in self.builders:
            out.append(lean.piece([f"key_{name}"], builder_lua(name, builders[name]) + "\n"))
        sep = "".join(c if c.isalnum() else f"%{c}" for c in RUN_ID_SEPARATOR)  # a Lua pattern
        out.append(lean.piece(["session_of"], (
            f"-- a run id is <session id>{RUN_ID_SEPARATOR}<n> (keys.run_id)\n"
            f"local function session_of(id) return string.match(id, '^(.*){sep}"
            f"[^{sep}]*$') or '' end\n")))  # fmt: skip
        # a session's first runs (`sid`: the id's session, known) by a lookup of the id's end,
        # not string.match and tonumber's strtod (a create's replicas each have run 1)
        firsts = ", ".join(f"['{RUN_ID_SEPARATOR}{i}'] = {i}" for i in range(1, 9))
        out.append(lean.piece(["run_number"], (
            f"local RUN_FIRSTS = {{{firsts}}}\n"
            f"local function run_number(id, sid)\n"
            f"  local n = sid and RUN_FIRSTS[string.sub(id, #sid + 1)]\n"
            f"  return n or tonumber(string.match(id, '{sep}(%d+)$')) or 0\n"
            f"end\n")))  # fmt: skip
        for lua_name, enum in VOCABULARY.items():
            out.append(lean.piece([lua_name], f"local {lua_name} = {{" + ", ".join(
                _lua_str(member.value) for member in enum) + "}\n"))  # fmt: skip
        return out

    def bound(self, number: str = "tonumber({0})") -> tuple[str, str]:
        """The named keys, arguments and blocks (K, A, KB, AB) as a function library's call
        binds them: Lua made once (`local K_, A_, KB_, AB_, O_`: the tables, and the block
        functions reading their offsets from `O_`; names no body would assign by mistake, as a
        bare `a = ...` would have reached a shared upvalue), and Lua run per call (each named key
        and argument written into the same tables - every one of them, so that nothing of
        the last call is left - and the blocks' offsets into `base`). A table and a
        closure made per call cost Redis more than the writes do. `number`: the Lua
        expression that makes a NUMBER argument ({0}) a number."""
        once = ["local K_, A_, KB_, AB_, O_ = {}, {}, {}, {}, {}"]
        per = [f"K_.{name} = KEYS[{i}]" for i, name in enumerate(self.keys, start=1)]
        per += [f"A_.{name} = {_lua_arg(f'ARGV[{i}]', kind, number)}"
                for i, (name, kind) in enumerate(self.args, start=1)]  # fmt: skip
        if self.tail:
            offset = _offset_expr(len(self.args), self.arg_blocks).replace("A.", "A_.")
            per += [f"A_.{name} = {_lua_arg(f'ARGV[{offset} + {i}]', kind, number)}"
                    for i, (name, kind) in enumerate(self.tail, start=1)]  # fmt: skip
        slot = 0
        for table, array, blocks, fixed in (
            ("KB_", "KEYS", self.key_blocks, len(self.keys)),
            ("AB_", "ARGV", self.arg_blocks, len(self.args)),
        ):
            done: list[Block] = []
            for block in blocks:
                slot += 1
                per.append(f"O_[{slot}] = {_offset_expr(fixed, done).replace('A.', 'A_.')}")
                fields = ", ".join(f"{name} = {array}[o + {j}]"
                                   for j, name in enumerate(block.fields, 1))  # fmt: skip
                once.append(f"{table}.{block.name} = function(i) local o = O_[{slot}] + "
                            f"(i - 1) * {block.size} return {{{fields}}} end")  # fmt: skip
                if block.size == 1:
                    once.append(f"{table}.{block.name}_{block.fields[0]} = function(i) "
                                f"return {array}[O_[{slot}] + i] end")  # fmt: skip
                done.append(block)
        per.append("K, A = K_, A_")
        if self.key_blocks:
            per.append("KB = KB_")
        if self.arg_blocks:
            per.append("AB = AB_")
        return "\n".join(once) + "\n", "\n".join(per) + "\n"


MARKS = ("\0", "\1")  # stand-ins for a key builder's arguments
# Partitioned (keys.Layout): the builders are made from keys.Keys(PREFIX_MARK), and the Lua
# takes the partition's prefix from the call's first key (every key of a call is of one
# partition: `<prefix>{<tag>}:`); with one partition the prefix is spelled in the builders.
PREFIX_MARK = "\2"
PARTITION_PREFIX_LUA = "local PFX = string.match(KEYS[1] or '', '^(.-%b{}:)') or ''"


def _arity(build: Callable[..., str]) -> int:
    return len(inspect.signature(build).parameters)


def builder_lua(name: str, build: Callable[..., str]) -> str:
    """A Lua function making keys as keys.py's `build` does (one or two string arguments)."""
    nargs = _arity(build)
    params = ("a", "b")[:nargs]
    named = dict(zip(MARKS, params, strict=False)) | {PREFIX_MARK: "PFX"}
    exprs = [named.get(part) or _lua_str(part)
             for part in re.split("([\0\1\2])", build(*MARKS[:nargs])) if part]  # fmt: skip
    return f"local function key_{name}({', '.join(params)}) return {' .. '.join(exprs)} end"


def _lua_str(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _lua_arg(expr: str, kind: str, number: str = "tonumber({0})") -> str:
    return number.format(expr) if kind == NUMBER else expr


def _offset_expr(fixed: int, blocks: Sequence[Block]) -> str:
    parts = [str(fixed)]
    for block in blocks:
        parts.append(f"({' + '.join(f'A.{c}' for c in block.count)}) * {block.size}")
    return " + ".join(parts)


def _blocks(table: str, array: str, blocks: Sequence[Block], fixed: int) -> list[str]:
    if not blocks:
        return []
    lines = [f"local {table} = {{}}"]
    done: list[Block] = []
    for block in blocks:
        base = _offset_expr(fixed, done)
        fields = ", ".join(f"{name} = {array}[o + {j}]" for j, name in enumerate(block.fields, 1))
        body = f"local o = base + (i - 1) * {block.size} return {{{fields}}}"
        line = f"do local base = {base} {table}.{block.name} = function(i) {body} end"
        if block.size == 1:
            # a one-field block's value, with no table made for it (one per run, in a batch)
            one = f"{table}.{block.name}_{block.fields[0]}"
            line += f" {one} = function(i) return {array}[base + i] end"
        lines.append(line + " end")
        done.append(block)
    return lines
