"""`sessionq`'s public names come from their homes when first asked for: a worker process
(`from sessionq import task`) does not load the producer, and every public name is there."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sessionq
from sessionq import producer, worker


def test_a_worker_process_does_not_load_the_producer() -> None:
    code = (
        "import sys; from sessionq import task, current_task; import sessionq.worker.loop; "
        "print(sorted(m for m in sys.modules if m.startswith('sessionq.producer')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_is_there_and_is_its_homes() -> None:
    assert sessionq.__all__ == sorted([*producer.__all__, *worker.__all__])
    for name in sessionq.__all__:
        home = producer if name in producer.__all__ else worker
        assert getattr(sessionq, name) is getattr(home, name)
    assert set(sessionq.__all__) <= set(dir(sessionq))
    namespace: dict[str, object] = {}
    exec("from sessionq import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} == set(sessionq.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Clinet'"):
        _ = sessionq.Clinet  # type: ignore[attr-defined]  # the misspelling is the point


def test_the_card_packages_are_attributes_before_anything_imported_them() -> None:
    code = ("import sessionq; print(sessionq.producer.__name__, sessionq.worker.__name__, "
            "sessionq.common.__name__)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["sessionq.producer", "sessionq.worker", "sessionq.common"]
