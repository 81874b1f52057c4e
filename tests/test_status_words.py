"""Status and state words are spelled once, in the StrEnums (`common/vocabulary.py`,
`common/events.EventType`): no module of the package writes one as a bare string (str or bytes).

Read from the ast. Not counted: the enum definitions themselves, docstrings, f-string text,
the keys of dict literals and the members of a tuple, list or set literal that also holds
other strings (those are names: a script's key roles, RQ's registries, `RUN_BLOCK`). The Lua
vocabulary comes from the same enums (`common/scripts/contract.py`); Lua is not scanned here.
"""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

from sessionq.common.events import EventType
from sessionq.common.vocabulary import Outcome, Status, StepResult, TaskState

ROOT = Path(__file__).resolve().parent.parent
ENUMS: tuple[type[StrEnum], ...] = (Status, TaskState, Outcome, StepResult, EventType)
WORDS: dict[str, str] = {}  # a word -> the first enum member that spells it
for _enum in ENUMS:
    for _member in _enum:
        WORDS.setdefault(_member.value, f"{_enum.__name__}.{_member.name}")
DOCUMENTED = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
DEFINITIONS = {"common/vocabulary.py"}  # the enums, and RQ's job status for each state


def package_files() -> list[Path]:
    files = [
        p for folder in ("common", "producer", "worker") for p in (ROOT / folder).rglob("*.py")
    ]
    return sorted([*files, *(ROOT / "sessionq").glob("*.py")])  # its folders are symlinks


def _word(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        text = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
        return text if text in WORDS else None
    return None


def _exempt(tree: ast.Module) -> set[int]:
    """The ids of the constants that are not words: see the module docstring."""
    out: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, DOCUMENTED) and isinstance(body, list) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
        if isinstance(node, ast.ClassDef) and any(
            isinstance(base, ast.Name) and base.id == "StrEnum" for base in node.bases
        ):
            out |= {id(n) for n in ast.walk(node)}
        elif isinstance(node, ast.JoinedStr):  # its text, not the expressions in it
            out |= {id(part) for part in node.values if isinstance(part, ast.Constant)}
        elif isinstance(node, ast.Dict):
            out |= {id(key) for key in node.keys if key is not None}
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            strings = [e for e in node.elts if isinstance(e, ast.Constant)
                       and isinstance(e.value, str | bytes)]  # fmt: skip
            if any(_word(e) is None for e in strings):
                out |= {id(e) for e in strings}
    return out


def bare_words(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    exempt = _exempt(tree)
    found = [
        (node.lineno, node.col_offset, f"{node.lineno}: {node.value!r} (use {WORDS[word]})")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and (word := _word(node)) is not None
        and id(node) not in exempt
    ]
    return [text for *_, text in sorted(found)]


def test_no_bare_status_words_in_the_package() -> None:
    found = {}
    for path in package_files():
        name = path.relative_to(ROOT).as_posix()
        if name in DEFINITIONS:
            continue
        if words := bare_words(path):
            found[name] = words
    assert found == {}


def test_the_scan_finds_words_and_passes_names(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Running."""\n'
        "def f(s, d):\n"
        '    """Running."""\n'
        '    keys = {"failed": d, "held": d}\n'
        '    block = ("job", "started", "failed")\n'
        "    note = f\"{s} failed {d['canceled']}\"\n"
        '    return s == "Running" or s == b"Terminating" or d["succeeded"] or "task.log"\n'
    )
    assert bare_words(module) == [
        "6: 'canceled' (use TaskState.CANCELED)",
        "7: 'Running' (use Status.RUNNING)",
        "7: b'Terminating' (use Status.TERMINATING)",
        "7: 'succeeded' (use TaskState.SUCCEEDED)",
        "7: 'task.log' (use EventType.TASK_LOG)",
    ]
