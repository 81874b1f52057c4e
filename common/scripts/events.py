"""Events without a state change (emit.lua, log.lua) and the shared state (state.lua)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sessionq.common import codec
from sessionq.common.scripts.base import ScriptsBase, now_ms
from sessionq.common.scripts.contracts import EMIT, LOG, STATE


class EventCalls(ScriptsBase):
    def _event_keys(self, sid: str) -> dict[str, str]:
        k = self.keys
        return {"chan_all": k.events_all_channel(), "session": k.session(sid),
                "history": k.history(sid), "chan": k.events_channel(sid)}  # fmt: skip

    def _event_args(self, sid: str, worker: str) -> dict[str, Any]:
        return {"now_ms": now_ms(), "cap": self.settings.history_cap, "worker": worker,
                "sid": sid}  # fmt: skip

    def emit(
        self,
        sid: str,
        events: Iterable[tuple[str, str | None, dict[str, Any] | None]],
        *,
        worker: str = "",
        client: Any = None,
    ) -> int:
        """Emit (type, task id, data) events of one session; 1 if it exists, else 0."""
        keys, args = self.emit_call(sid, events, worker=worker)
        return int(self.call("emit", keys, args, client=client))

    def emit_call(
        self,
        sid: str,
        events: Iterable[tuple[str, str | None, dict[str, Any] | None]],
        *,
        worker: str = "",
    ) -> tuple[list[str], list[Any]]:
        """The keys and args of `emit`, sent by no one: for a caller with its own client."""
        blocks = [(etype, task or "", codec.encode(data or {})) for etype, task, data in events]
        keys = EMIT.pack_keys(self._event_keys(sid))
        args = EMIT.pack_args({**self._event_args(sid, worker), "nevents": len(blocks)},
                              {"event": blocks})  # fmt: skip
        return keys, args

    def log(
        self, sid: str, task_id: str, lines: Sequence[tuple[str, str]], *, worker: str = ""
    ) -> None:
        """Append (stream, line) pairs of one run to the session's logs, as task.log events."""
        keys = LOG.pack_keys({**self._event_keys(sid), "logs": self.keys.logs(sid)})
        args = LOG.pack_args(
            {**self._event_args(sid, worker), "task": task_id,
             "logs_cap": self.settings.logs_cap, "nlines": len(lines)},
            {"line": list(lines)},
        )  # fmt: skip
        self.call("log", keys, args)

    def state_change(
        self, sid: str, key: str, op: str, value: bytes = b"", *, worker: str = "",
        task: str = "",
    ) -> bool:  # fmt: skip
        """Set (op "set", msgpack `value`) or delete ("del") one key of the session's shared
        state, with its state.changed event; False when the session does not exist."""
        keys = STATE.pack_keys({**self._event_keys(sid), "state": self.keys.session_state(sid)})
        args = STATE.pack_args({**self._event_args(sid, worker), "task": task, "key": key,
                                "op": op, "value": value})  # fmt: skip
        return bool(self.call("state", keys, args))
