"""sessionq: sessions - named, persistent collections of task runs - on Redis.

The one import name (SPEC §9): the producer's API, the worker's `@task` and `current_task()`,
and the errors. The card's folders are installed under it as `sessionq.common`,
`sessionq.producer` and `sessionq.worker`; their `__all__` lists are the one source of what
is public here.
"""

from sessionq import producer, worker
from sessionq.producer import *  # noqa: F403 (producer.__all__: the API and the errors)
from sessionq.worker import *  # noqa: F403 (worker.__all__: task, current_task, TaskContext)

__all__ = sorted([*producer.__all__, *worker.__all__])
