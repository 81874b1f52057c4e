"""The other job queues' venvs: `bench/.venvs/<system>`, made on first use from
`bench/foreign/requirements-<system>.txt` (exact pins) and remade when that file changes.

Each system gets a venv of its own because their pins clash with sessionq's (arq 0.28 requires
redis-py < 6). A system that cannot be installed is reported as unavailable, with pip's reason;
the benchmark goes on without it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venvs"
SYSTEMS = {"huey": "Huey", "saq": "SAQ", "arq": "arq"}  # name -> how the table spells it
INSTALL_TIMEOUT_S = 600


class Unavailable(RuntimeError):
    """The system's venv could not be made; the message says why."""


def requirements(system: str) -> Path:
    return HERE / f"requirements-{system}.txt"


def pins(system: str) -> dict[str, str]:
    """The pinned versions ("name==version" lines) of a system's requirements file."""
    out = {}
    for line in requirements(system).read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name and not name.startswith("#"):
            out[name] = version
    return out


def python_for(system: str, log: object = None) -> Path:
    """The interpreter of the system's venv, made (or remade) first if need be."""
    if system not in SYSTEMS:
        raise Unavailable(f"unknown system {system!r}")
    wanted = hashlib.sha256(requirements(system).read_bytes()).hexdigest()
    home = VENVS / system
    python = home / "bin" / "python"
    stamp = home / "installed.sha256"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    if callable(log):
        log(f"making the {SYSTEMS[system]} venv in {home} (pip install -r {requirements(system)})")
    try:
        venv.EnvBuilder(clear=True, with_pip=True).create(home)
        proc = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "-r", str(requirements(system))],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"cannot make its venv: {exc}") from exc
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if "ERROR" in line] or [
            proc.stderr.strip()[-300:]
        ]
        raise Unavailable(f"pip install failed: {lines[-1][:300]}")
    stamp.write_text(wanted)
    return python


if __name__ == "__main__":  # python -m bench.foreign.venvs [SYSTEM ...]: make them now
    for name in sys.argv[1:] or list(SYSTEMS):
        try:
            print(name, python_for(name, log=print))
        except Unavailable as exc:
            print(name, "unavailable:", exc)
