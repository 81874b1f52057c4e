"""`SharedState`: a session's shared dict, read and written by the producer and by its
running tasks; every change is a `state.changed` event (SPEC §3, narupatools' shared state)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from sessionq.common import codec
from sessionq.common.connection import sync_reply
from sessionq.common.errors import SessionNotFound, ValidationTypeError
from sessionq.common.scripts import Scripts
from sessionq.common.validation import check_encodable


class SharedState(MutableMapping[str, Any]):
    """Keys are strings, values anything msgpack encodes; reads go to Redis every time."""

    def __init__(self, scripts: Scripts, sid: str, *, worker: str = "", task: str = "") -> None:
        self._scripts = scripts
        self._sid = sid
        self._worker = worker
        self._task = task
        self._key = scripts.keys.session_state(sid)

    def _change(self, key: str, op: str, value: bytes = b"") -> None:
        if not isinstance(key, str):
            raise ValidationTypeError("key", f"state keys are strings, got {type(key).__name__}")
        if not self._scripts.state_change(self._sid, key, op, value, worker=self._worker,
                                          task=self._task):  # fmt: skip
            raise SessionNotFound(self._sid)

    def __setitem__(self, key: str, value: Any) -> None:
        self._change(key, "set", check_encodable(value, f"state[{key!r}]"))

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._change(key, "del")

    def __getitem__(self, key: str) -> Any:
        raw = self._scripts.redis.hget(self._key, key)
        if raw is None:
            raise KeyError(key)
        return codec.decode(raw)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._scripts.redis.hexists(self._key, key))

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(codec.text(k) for k in sync_reply(self._scripts.redis.hkeys(self._key))))

    def __len__(self) -> int:
        return sync_reply(self._scripts.redis.hlen(self._key))

    def to_dict(self) -> dict[str, Any]:
        """The whole state in one read."""
        raw = sync_reply(self._scripts.redis.hgetall(self._key))
        return {codec.text(k): codec.decode(v) for k, v in sorted(raw.items())}

    def __repr__(self) -> str:
        return f"SharedState({self.to_dict()!r})"
