"""CANFAR's conventions for naming and picking sessions: replica names, one id or a list."""

from __future__ import annotations

from collections.abc import Sequence

from sessionq.common.validation import type_error


def names_for_replicas(name: str, replicas: int) -> list[str]:
    """CANFAR's naming: `name` for one replica, `name-1 ... name-N` for several."""
    if replicas == 1:
        return [name]
    return [f"{name}-{i}" for i in range(1, replicas + 1)]


def as_id_list(ids: str | Sequence[str], field_name: str = "ids") -> list[str]:
    """One id or a list of them, as CANFAR's calls take."""
    if isinstance(ids, str):
        return [ids]
    if isinstance(ids, Sequence) and all(isinstance(i, str) for i in ids):
        return list(ids)
    raise type_error(field_name, "an id or a list of ids", ids)
