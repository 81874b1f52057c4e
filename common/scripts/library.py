"""Every script as one Redis 7 function library: its prelude defined once per server.

A script sent by EVALSHA runs its whole source on every call: the contract's prologue and
each prelude function it uses are made anew (bench.luacost: ~9 µs of Redis time a call
before the body runs, and the garbage of it). A function library is run once, when loaded
(FUNCTION LOAD): its functions stay defined, and a call (FCALL) runs only its own body.

The library holds, once: the key builders, the run-id helpers and the vocabulary of the
contracts' prologues, and every prelude function; then one registered function per script,
named `sq_<hash>_<script>`. Per call a function binds KEYS and ARGV, its contract's named
keys and arguments (K, A, KB, AB: upvalues of the prelude's functions, as they are of a
script's: tables and block functions made once per script, every name written anew each
call - Contract.bound; a NUMBER argument up to 64 read by a lookup, not tonumber's strtod),
and makes the prelude's state anew (`fresh`: G and what is written into it, the
caches PK and NUMSTR - every prelude table that some code writes to by its name, or that
fills itself through a metatable), so that nothing of one call is seen by the next; the
functions and the constants (strings, lookup tables no code writes to) are made once. A
prelude table must be written to by its own name: one written through another name (an
alias, a function's argument) would keep what a call wrote for the next. The library's
name and its functions' carry a hash of the whole source: each prefix and partition layout
makes other Lua, and two versions or prefixes on one server never meet. Where the server
has no functions (Redis 6), the ACL refuses FUNCTION and FCALL, or a full Redis refuses the
load, the scripts go by EVALSHA as before (transport.has_functions).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from sessionq.common.scripts import lean
from sessionq.common.scripts.contract import Contract, builder_lua

# a prelude statement made once: a function (`local function f`, `f = function`), or a bare
# `local a, b` declaring names assigned later
_ONCE = re.compile(r"(local\s+function\b|[A-Za-z_]\w*\s*=\s*function\b|local\s+[\w\s,]+$)")
_LOCAL_SET = re.compile(r"local\s+([\w\s,]+?)\s*=")
# what a library cannot reach while it loads, only when its functions run
RUNTIME = frozenset({"cmsgpack", "cjson", "struct", "bit", "redis", "math"})
# the per-call pieces of a contract's prologue: its named keys, arguments and blocks
PER_CALL = ("K", "A", "KB", "AB", "PFX")
# each call starts with all of them unset: a script never reads the blocks of the call before
RESET = ", ".join(PER_CALL) + " = " + ", ".join("nil" for _ in PER_CALL) + "\n"
# a NUMBER argument of a call: the small counts (how many finishes, starts, queues...) by a
# lookup made once, not by tonumber's strtod (~2,000 instructions each, 7 a worker's step)
NUMBERS = "local NUMARG = {" + ", ".join(f"['{i}'] = {i}" for i in range(65)) + "}\n"
NUMBER_ARG = "(NUMARG[{0}] or tonumber({0}))"


def names(lib_hash: str, script: str) -> str:
    """The function of `script` in the library of hash `lib_hash`."""
    return f"sq_{lib_hash}_{script}"


_MADE: dict[tuple[Any, ...], tuple[str, dict[str, str]]] = {}  # (every client of a prefix alike)


def library(
    contracts: Mapping[str, Contract], bodies: Mapping[str, str], prelude: str,
    builders: Mapping[str, Callable[..., str]],
) -> tuple[str, dict[str, str]]:  # fmt: skip
    """The library's source, and each script's function name (made once per process for
    each set of sources and key names)."""
    key = (tuple(contracts.items()), tuple(bodies.items()), prelude,
           tuple((name, builder_lua(name, build)) for name, build in builders.items()))  # fmt: skip
    if key not in _MADE:
        _MADE[key] = _library(contracts, bodies, prelude, builders)
    return _MADE[key]


def _library(
    contracts: Mapping[str, Contract], bodies: Mapping[str, str], prelude: str,
    builders: Mapping[str, Callable[..., str]],
) -> tuple[str, dict[str, str]]:  # fmt: skip
    lines: list[str] = ["local KEYS, ARGV, " + ", ".join(PER_CALL) + "\n"]
    fresh: list[str] = []
    shared, pfx = _shared_prologue(builders)
    lines.extend(shared)
    written = _written(prelude + "".join(bodies.values()))
    for p in lean.split(prelude):
        code = _code(p.text)
        local = _LOCAL_SET.match(code)
        if _ONCE.match(code) or (local and not _state(p.text, local.group(1), written)):
            lines.append(p.text)
        elif local:
            lines.append(f"local {local.group(1)}\n")
            fresh.append(p.text.replace(code, code[len("local ") :], 1))
        else:
            fresh.append(p.text)
    lines.append("local function fresh()\n" + "".join(fresh) + "end\n")
    calls: list[tuple[str, str]] = []
    lines.append(NUMBERS)
    for name, contract in contracts.items():
        once, per_call = contract.bound(NUMBER_ARG)
        calls.append((name, contract.flags and ", ".join(f"'{f}'" for f in contract.flags) or ""))
        lines.append(
            f"local call_{name}\ndo\n{once}call_{name} = function(keys, args)\n"
            f"KEYS, ARGV = keys, args\n{RESET}{pfx}{per_call}fresh()\n{bodies[name]}\nend\nend\n"
        )
    # the names carry a hash of the whole source but the names themselves: the flags too
    register = "".join(
        f"redis.register_function{{function_name = '{names('@', name)}', "
        f"callback = call_{name}, flags = {{{flags}}}}}\n"
        for name, flags in calls
    )
    digest = hashlib.sha1(("".join(lines) + register).encode()).hexdigest()[:12]
    source = (
        f"#!lua name=sq_{digest}\n"
        + "".join(lines)
        + register.replace(names("@", ""), names(digest, ""))
    )
    return source, {name: names(digest, name) for name in contracts}


def _shared_prologue(builders: Mapping[str, Callable[..., str]]) -> tuple[list[str], str]:
    """What every contract's prologue makes alike, once: key builders (all of them), run-id
    helpers, the vocabulary, KX; and the partition's prefix PFX, made per call (none with
    one partition)."""
    everything = Contract("library", keys=(), args=(), extra_keys=True, builders=tuple(builders))
    out, pfx = [], ""
    for p in everything.pieces(builders):
        if p.defines and p.defines[0] == "PFX":
            pfx = _per_call(p.text)
        elif p.defines and p.defines[0] not in ("K", "A"):
            out.append(p.text)
    return out, pfx


def _per_call(text: str) -> str:
    """A per-call prologue piece assigning the library's upvalue instead of a local."""
    return re.sub(r"^local (K|A|KB|AB|PFX) =", r"\1 =", text, flags=re.M)


def _state(text: str, names: str, written: set[str]) -> bool:
    """Is what the statement `text` makes (`names`) made per call: a cache (setmetatable), a
    table some code writes to by its name (`written`: `G.x = `, `T[k] = `), or a value of a
    library the loading library cannot reach (cmsgpack.pack)? Constants (strings, the lookup
    tables) are made once."""
    if "setmetatable" in text or lean.names_in(text) & RUNTIME:
        return True
    return any(n.strip() in written for n in names.split(","))


# a field or an index of a name assigned: `G.x = `, `T[k] = ` (not `==`)
_WRITTEN = re.compile(r"\b([A-Za-z_]\w*)\s*(?:\.\w+|\[[^]]*\])\s*=(?=[^=])")


def _written(code: str) -> set[str]:
    """The names whose fields or indexes `code` assigns (one pass over all of it)."""
    return set(_WRITTEN.findall(code))


def _code(text: str) -> str:
    return next(line for line in text.splitlines() if not line.startswith("--"))
