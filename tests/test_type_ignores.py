"""Every type-ignore comment in sessionq, its tests and bench names its error codes and says
why."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import sessionq

PACKAGE = Path(sessionq.__file__).resolve().parent
ROOT = Path(__file__).resolve().parent.parent
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[a-z0-9,\- ]+\])?(?P<rest>.*)$")


# not ours: the other queues' venvs bench.compare makes (bench/.venvs), caches
FOREIGN = {".venvs", ".venv", "__pycache__", "results"}


def bare_ignores(top: Path) -> list[str]:
    bare = []
    for folder, dirs, files in os.walk(top, followlinks=True):
        dirs[:] = [d for d in dirs if d not in FOREIGN]
        for file in files:
            if not file.endswith(".py"):
                continue
            path = Path(folder) / file
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                found = IGNORE.search(line)
                if found and (not found["codes"] or not re.match(r"\s+#\s*\S", found["rest"])):
                    bare.append(f"{path.relative_to(top)}:{n}")
    return bare


@pytest.mark.parametrize("top", [PACKAGE, ROOT / "tests", ROOT / "bench"], ids=lambda p: p.name)
def test_every_type_ignore_names_its_codes_and_says_why(top: Path) -> None:
    assert bare_ignores(top) == []
