"""Every `# type: ignore` in sessionq names its error codes and says why."""

from __future__ import annotations

import os
import re
from pathlib import Path

import sessionq

PACKAGE = Path(sessionq.__file__).resolve().parent
IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[a-z0-9,\- ]+\])?(?P<rest>.*)$")


def test_every_type_ignore_names_its_codes_and_says_why() -> None:
    bare = []
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = Path(folder) / file
            for n, line in enumerate(path.read_text().splitlines(), start=1):
                found = IGNORE.search(line)
                if found and (not found["codes"] or not re.match(r"\s+#\s*\S", found["rest"])):
                    bare.append(f"{path.relative_to(PACKAGE)}:{n}")
    assert bare == []
