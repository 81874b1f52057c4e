"""Session control for `Client` (SPEC §3, narupatools): pause, play, step, stop, restart, and
the task records of a session. Pause, play and step are one atomic script each, here; stop
and restart act on work under way, so they go to the control queue and workers carry them out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sessionq.common import codec
from sessionq.common.errors import CodecError, SessionNotFound
from sessionq.common.keys import run_number
from sessionq.common.models import TASK_FIELDS, Status, as_id_list, task_dict

if TYPE_CHECKING:
    from redis import Redis

    from sessionq.common.keys import Keys
    from sessionq.common.scripts import Scripts

log = logging.getLogger(__name__)
MAX_TRIES = 50  # optimistic steps (play, step) retried when a worker moved a run meanwhile


task_order = run_number  # the order a session's tasks were added in


class SessionControl:
    """Mixed into `Client`: every call takes one id or a list and returns id -> accepted;
    an unknown id, or another owner's session, is logged and False (as for destroy)."""

    redis: Redis
    keys: Keys
    if TYPE_CHECKING:  # provided by Client

        @property
        def scripts(self) -> Scripts: ...

        @property
        def user(self) -> str: ...

        def _stop_running(self, sid: str) -> None: ...

    def _each(self, ids: str | Sequence[str], one: Callable[[str], bool],
              what: str) -> dict[str, bool]:  # fmt: skip
        out: dict[str, bool] = {}
        id_list = as_id_list(ids)
        raws = self.redis.hmget(self.keys.sessions(), id_list) if id_list else []
        for sid, raw in zip(id_list, raws, strict=True):
            owner = None
            if raw is not None:
                try:
                    owner = codec.decode_map(raw, f"session {sid}").get("owner")
                except CodecError as exc:
                    log.error("%s: session %s: %s", what, sid, exc)
            if raw is None or owner is None:
                log.warning("%s: no such session: %s", what, sid)
                out[sid] = False
            elif owner != self.user:
                log.warning("%s: session %s belongs to %s, not %s", what, sid, owner, self.user)
                out[sid] = False
            else:
                out[sid] = one(sid)
        return out

    def pause(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """After this returns no further run of the session starts (runs already started
        carry on and see should_stop); runs dequeued meanwhile are parked, in order."""
        return self._each(ids, self._pause_one, "pause")

    def _pause_one(self, sid: str) -> bool:
        return bool(self.scripts.control("pause", sid, {})[0] == "ok")

    def play(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """Release the held runs, in order, and let the session run."""
        return self._each(ids, self._play_one, "play")

    def _play_one(self, sid: str) -> bool:
        for _ in range(MAX_TRIES):
            held = [codec.text(i) for i in self.redis.zrange(self.keys.session_held(sid), 0, -1)]
            reply = self.scripts.control("play", sid, {}, self.scripts.with_queues(held))
            if reply[0] != "retry":
                return bool(reply[0] == "ok")
        log.error("play %s: the held runs kept changing; try again", sid)
        return False

    def step(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """Release exactly one run - the oldest held, else the next one dequeued - and stay
        paused; False for a session that is not paused."""
        return self._each(ids, self._step_one, "step")

    def _step_one(self, sid: str) -> bool:
        for _ in range(MAX_TRIES):
            first = self.redis.zrange(self.keys.session_held(sid), 0, 0)
            runs = self.scripts.with_queues([codec.text(first[0])]) if first else []
            reply = self.scripts.control("step", sid, {}, runs)
            if reply[0] != "retry":
                if reply[0] == "no":
                    log.warning("step: session %s is %s, not paused", sid, reply[1])
                return bool(reply[0] == "ok")
        log.error("step %s: the held runs kept changing; try again", sid)
        return False

    def stop(self, ids: str | Sequence[str]) -> dict[str, bool]:
        """Cancel the queued runs and stop the running ones; the session ends Stopped."""
        return self._each(ids, self._stop_one, "stop")

    def _stop_one(self, sid: str) -> bool:
        status = self.redis.hget(self.keys.session(sid), "status")
        if status == b"Terminating":
            return False
        accepted = self.scripts.request(
            sid, "stop", [sid], status=Status.STOPPED.value, event="session.stopped"
        )
        if accepted:
            self._stop_running(sid)
        return accepted

    def restart(self, ids: str | Sequence[str], *, failed_only: bool = False) -> dict[str, bool]:
        """Run the sessions' ended tasks again (only the failed ones with failed_only)."""
        return self._each(
            ids, lambda sid: self.scripts.request(sid, "restart", [sid, bool(failed_only)]),
            "restart",
        )  # fmt: skip

    def tasks(self, sid: str) -> list[dict[str, Any]]:
        """The task records of one session, in the order they were added; NotFound if the
        session does not exist."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self.keys.session(sid))
        pipe.hgetall(self.keys.session_tasks(sid))
        exists, names = pipe.execute()
        if not exists:
            raise SessionNotFound(sid)
        return self.task_records(
            sid,
            sorted((codec.text(k) for k in names), key=task_order),
            {codec.text(k): codec.text(v) for k, v in names.items()},
        )

    def task_records(
        self, sid: str, task_ids: Sequence[str], names: dict[str, str]
    ) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hmget(self.scripts.rq.job(tid), TASK_FIELDS)
        return [
            task_dict(tid, names.get(tid, tid), row)
            for tid, row in zip(task_ids, pipe.execute(), strict=True)
        ]
