"""What bench.compare runs: a Step is one measurement of each system, a Variant one system's
measurement process (a bench.measure name by default, or another module's, in the system's
own interpreter)."""

from __future__ import annotations

from dataclasses import dataclass

SQ, RQ = "sessionq", "rq"


@dataclass(frozen=True)
class Variant:
    system: str  # SQ, RQ or one of bench.foreign.venvs.SYSTEMS
    measurement: str  # a name the module takes
    args: tuple[str, ...]
    module: str = "bench.measure"


@dataclass(frozen=True)
class Step:
    """One measurement of each system, run back to back (sessionq first) in every round."""

    name: str
    variants: tuple[Variant, ...]
    cpu_runs: int = 0  # > 0: Redis's CPU around each process, divided by this, is a figure
