"""sessionq: sessions - named, persistent collections of task runs - on Redis.

The one import name (SPEC §9): the producer's API, the worker's `@task` and `current_task()`,
and the errors. The card's folders are installed under it as `sessionq.common`,
`sessionq.producer` and `sessionq.worker`; their `__all__` lists are the one source of what
is public here. A name is imported from its home when first asked for, so that a worker
process (`from sessionq import task`) does not load the producer's client, sessions and
asyncio API.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessionq import producer, worker
    from sessionq.producer import *  # noqa: F403 (producer.__all__: the API and the errors)
    from sessionq.worker import *  # noqa: F403 (worker.__all__: task, current_task, TaskContext)

    __all__ = producer.__all__ + worker.__all__  # (at run time: sorted, made when asked for)

_HOMES = ("sessionq.worker", "sessionq.producer")  # the lighter first
_PACKAGES = ("common", "producer", "worker")

if not TYPE_CHECKING:  # (a type checker sees the names above, and flags a misspelt one)

    def __getattr__(name: str) -> Any:
        if name == "__all__":
            return sorted(n for home in _HOMES for n in importlib.import_module(home).__all__)
        if name in _PACKAGES:  # sessionq.producer etc. before anything imported them
            return importlib.import_module(f"sessionq.{name}")
        if not name.startswith("__"):
            # the homes already imported first: an unknown name imports nothing new
            homes = sorted(_HOMES, key=lambda home: home not in sys.modules)
            for home in homes:
                module = importlib.import_module(home)
                if name in module.__all__:
                    value = getattr(module, name)
                    globals()[name] = value
                    return value
        raise AttributeError(f"module 'sessionq' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *__getattr__("__all__")})
