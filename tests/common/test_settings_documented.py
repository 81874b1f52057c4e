"""Every setting a process reads from its environment has a row in the README's
Configuration table (a knob nobody can find is a knob nobody can turn)."""

from __future__ import annotations

import re
from pathlib import Path

from sessionq.common import settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_rows() -> set[str]:
    text = README.read_text()
    table = text.split("## Configuration", 1)[1].split("\n#", 1)[0]
    rows = set()
    for cell in re.findall(r"^\| (`SESSIONQ_[^|]*)\|", table, flags=re.M):
        names = re.findall(r"`(SESSIONQ_[A-Z_]*|_[A-Z_]+)`", cell)
        first = names[0]
        rows.add(first)
        # "`SESSIONQ_HEARTBEAT_INTERVAL_S` / `_TTL_S`": the second shares the first's stem
        stem = first.rsplit("_", 2)[0]
        rows.update(stem + n for n in names[1:] if n.startswith("_"))
    return rows


def test_every_environment_setting_has_a_row_in_the_readme() -> None:
    knobs = {*settings._INT_KNOBS.values(), *settings._ZERO_KNOBS.values(),
             *settings._FLOAT_KNOBS.values()}  # fmt: skip
    assert knobs, "the settings' tables moved: this test must find them"
    missing = sorted(knobs - _table_rows())
    assert not missing, f"not in the README's Configuration table: {missing}"
