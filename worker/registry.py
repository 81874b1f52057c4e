"""The `@task` registry: only functions registered here ever run (SPEC §4)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar, overload

from sessionq.common.errors import ConfigError, RunRejected

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_REGISTRY: dict[str, Callable[..., Any]] = {}


@overload
def task(func: F, /) -> F: ...
@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...


def task(func: Any = None, /, *, name: str | None = None) -> Any:
    """Register a function so workers may run it; it stays callable as a plain function.
    Its name is `"module:qualname"` unless `name` is given."""

    def register(fn: F) -> F:
        full = name or f"{fn.__module__}:{fn.__qualname__}"
        existing = _REGISTRY.get(full)
        if existing is not None and existing is not fn:
            same_code = getattr(existing, "__code__", None) is getattr(fn, "__code__", None)
            if not same_code:
                log.warning("task %s registered again; the newer function wins", full)
        _REGISTRY[full] = fn
        fn.__sessionq_name__ = full  # type: ignore[attr-defined]  # a function takes any attribute
        return fn

    if func is not None:
        return register(func)
    return register


def resolve(name: str) -> Callable[..., Any]:
    """The registered function of this name, or RunRejected saying it is not registered."""
    fn = _REGISTRY.get(name)
    if fn is None:
        raise RunRejected(
            f"function {name!r} is not a registered @task on this worker (register it with "
            "@task, from sessionq.worker, and start the worker with --import MODULE)"
        )
    return fn


def extend_import_path(dirs: list[str]) -> None:
    """Put `dirs` first on the import path, in order (the current directory first, as
    `python -m` and `rq worker` do), so that --import finds a project's own modules."""
    for directory in reversed([os.path.abspath(d) for d in dirs]):
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)


def import_modules(modules: list[str]) -> None:
    """Import the --import modules so their @task functions register; ConfigError if one
    does not import (not found, a syntax error, or an exception raised as it runs: named
    with where it was raised)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"--import {module}: {exc}") from exc
        except SyntaxError as exc:  # (its message names the file and line)
            raise ConfigError(f"--import {module}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            raise ConfigError(f"--import {module}: {type(exc).__name__}: {exc} "
                              f"({frame.filename}, line {frame.lineno})") from exc  # fmt: skip


def registered() -> list[str]:
    return sorted(_REGISTRY)
