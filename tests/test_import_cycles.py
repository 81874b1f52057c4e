"""No import cycles among sessionq's modules: every import counts, read from the ast - at the
top, inside a function (a lazy import hides a cycle, it does not break it) or under
TYPE_CHECKING (the types still lean both ways)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import sessionq

PACKAGE = Path(sessionq.__file__).resolve().parent


def modules() -> dict[str, Path]:
    """sessionq's modules by dotted name (its subpackages are symlinks: followed)."""
    out = {}
    paths = [
        Path(folder) / file
        for folder, _, files in os.walk(PACKAGE, followlinks=True)
        for file in files
        if file.endswith(".py")
    ]
    for path in paths:
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(("sessionq", *parts))] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The sessionq modules that module `name` imports (a package's name when the import
    names the package, its submodule's when it names one: `from a import b`)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in known else source)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_of(module: str, known: dict[str, Path]) -> str:
    return module if known[module].name == "__init__.py" else module.rpartition(".")[0]


def test_no_import_cycles_inside_packages() -> None:
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    # a package's __init__ re-exports its modules, and they import their siblings by the
    # package's name: edges into a package's own __init__ from inside it are not cycles
    for name, targets in graph.items():
        graph[name] = {
            t for t in targets if not (known[t].name == "__init__.py" and name.startswith(t + "."))
        }
    assert cycles(graph) == []


def test_the_finder_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from sessionq.x import b\n")
    b = tmp_path / "b.py"
    b.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sessionq.x.a\n")
    known = {"sessionq.x.a": a, "sessionq.x.b": b}
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert cycles(graph) == [["sessionq.x.a", "sessionq.x.b"]]
