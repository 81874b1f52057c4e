"""Imports go one way: producer -> common and worker -> common (STYLE.md), all through the
one import name `sessionq` (SPEC §9): nothing imports a bare `common`, `producer` or `worker`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"producer": {"worker"}, "worker": {"producer"}, "common": {"producer", "worker"}}


def _package(module: str) -> str:
    """The package an absolute import reaches: `sessionq.worker.loop` -> worker."""
    parts = module.split(".")
    return parts[1] if parts[0] == "sessionq" and len(parts) > 1 else parts[0]


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {_package(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(_package(node.module))
    return found


def bare_imports(path: Path) -> set[str]:
    """Old top-level names imported without `sessionq.` in front."""
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}  # fmt: skip
    names |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}  # fmt: skip
    return {n.split(".")[0] for n in names} & set(FORBIDDEN)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in (ROOT / package).rglob("*.py")
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert offenders == {}


def test_only_codec_imports_msgpack_and_nothing_imports_pickle() -> None:
    for package in FORBIDDEN:
        for path in (ROOT / package).rglob("*.py"):
            names = imported_packages(path)
            assert "pickle" not in names and "cloudpickle" not in names and "dill" not in names, (
                path
            )
            if path.name != "codec.py":
                assert "msgpack" not in names, path


def test_everything_imports_through_sessionq() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(bare_imports(path))
        for folder in (*FORBIDDEN, "tests", "bench", "sessionq")
        for path in (ROOT / folder).rglob("*.py")
        if bare_imports(path)
    }
    assert offenders == {}
