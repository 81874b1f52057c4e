"""Imports go one way: producer -> common and worker -> common (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"producer": {"worker"}, "worker": {"producer"}, "common": {"producer", "worker"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


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
