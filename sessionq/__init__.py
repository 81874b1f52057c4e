"""sessionq: sessions - named, persistent collections of task runs - on Redis.

The one import name (SPEC §9): the producer's API, the worker's `@task` and `current_task()`,
and the errors. The card's folders are installed under it as `sessionq.common`,
`sessionq.producer` and `sessionq.worker`; their `__all__` lists are the one source of what
is public here. The names are imported on first use (PEP 562): a worker process, which
imports `sessionq.worker` (and so this package first), does not pay for the producer's
modules (asyncio clients, rich, click: about a tenth of a second at every worker's start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessionq import producer, worker
    from sessionq.producer import *  # noqa: F403 (producer.__all__: the API and the errors)
    from sessionq.worker import *  # noqa: F403 (worker.__all__: task, current_task, TaskContext)

    __all__ = sorted([*producer.__all__, *worker.__all__])
else:

    def __getattr__(name: str) -> Any:
        """A public name (or `producer`, `worker`, `__all__`), imported on first use."""
        from importlib import import_module

        if name in ("producer", "worker"):
            return import_module(f"sessionq.{name}")  # (the import binds it here)
        parts = (import_module("sessionq.producer"), import_module("sessionq.worker"))
        if name == "__all__":
            value: Any = sorted(n for part in parts for n in part.__all__)
        else:
            owner = next((p for p in parts if name in p.__all__), None)
            if owner is None:
                raise AttributeError(f"module 'sessionq' has no attribute {name!r}")
            value = getattr(owner, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__getattr__("__all__")})
