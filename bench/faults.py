"""The Redis faults `bench.soak --fault` causes for real, and what it watches meanwhile.

`failover`: a master, a replica and three sentinels (quorum 2); before each kill the replica
is frozen (SIGSTOP) for a while so that it lags for real, then the master is SIGKILLed and
the replica let go: the sentinels promote it, and the old master is brought back as its
replica for the next round. `freeze`: the one redis-server SIGSTOPped for longer than the
heartbeat TTL, then SIGCONTed. `oom`: `maxmemory` set below the memory in use for a while
(`noeviction`: every write that needs memory answers OOM), then lifted.

Also here: a listener on every session that keeps what it yielded (set against the final
histories at the end: events yielded that the history no longer holds, and whether a
`listener.gap` owned up to them), a producer that adds runs in small batches while they drain
(what it was acknowledged, what it was refused), and a watch on the worker processes under
our supervisors (a crash loop shows as new pids).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from redis import Redis

from sessionq.common.connection import sync_reply
from sessionq.common.errors import SessionqError
from sessionq.common.redisserver import RedisServer, SentinelServer

SERVICE = "sq-soak"
READY_TIMEOUT_S = 60.0
RESYNC_PATIENCE_S = 20.0
POLL_S = 0.05


def wait_until(predicate: Any, what: str, timeout: float = READY_TIMEOUT_S) -> float:
    """Poll until `predicate()` is truthy; the seconds it took. RuntimeError naming `what`."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except (OSError, SessionqError, Exception):  # a server on its way up or down
            pass
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_S)


class _SentinelCommands(Protocol):
    """A sentinel's replies as read here (redis-py 5.3 leaves these commands untyped)."""

    def sentinel_master(self, service_name: str) -> dict[str, Any]: ...
    def sentinel_slaves(self, service_name: str) -> list[dict[str, Any]]: ...


def admin(port: int) -> Redis:
    return Redis(port=port, socket_timeout=5, decode_responses=True)


def info(port: int, section: str) -> dict[str, Any]:
    client = admin(port)
    try:
        return dict(sync_reply(client.info(section)))
    finally:
        client.close()


# -- a single server: freeze, oom -----------------------------------------------------------------
@dataclass
class Single:
    """One redis-server."""

    server: RedisServer

    @property
    def url(self) -> str:
        return self.server.url

    def freeze(self, seconds: float) -> dict[str, Any]:
        """SIGSTOP the server for `seconds`, then SIGCONT."""
        self.server.pause()
        try:
            time.sleep(seconds)
        finally:
            self.server.resume()
        return {"fault": "freeze", "seconds": seconds}

    def oom(self, seconds: float, attempt: Any) -> dict[str, Any]:
        """`maxmemory` at half the memory in use for `seconds` (`noeviction`), then lifted;
        `attempt()` is called meanwhile (a producer call): its outcome is kept."""
        client = admin(self.server.port)
        try:
            used = int(sync_reply(client.info("memory"))["used_memory"])
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", str(max(used // 2, 1)))
            tried = ""
            try:
                time.sleep(seconds / 2)
                try:
                    attempt()
                    tried = "accepted"
                except Exception as exc:  # the error a producer gets for OOM
                    tried = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                time.sleep(seconds / 2)
                peak = int(sync_reply(client.info("memory"))["used_memory"])
            finally:
                client.config_set("maxmemory", "0")
        finally:
            client.close()
        return {"fault": "oom", "seconds": seconds, "used_bytes": used,
                "maxmemory": max(used // 2, 1), "used_at_end_bytes": peak,
                "producer_call": tried}  # fmt: skip

    def close(self) -> None:
        self.server.stop()


# -- a master, a replica, three sentinels: failover -----------------------------------------------
@dataclass
class Sentinels:
    """A master and a replica watched by three sentinels; `fail_over` swaps their roles."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]
    failovers: int = 0
    resync_restarts: int = 0

    @classmethod
    def start(cls) -> Sentinels:
        servers: list[RedisServer] = []
        try:
            master = RedisServer().start()
            servers.append(master)
            replica = RedisServer(replica_of=master).start()
            servers.append(replica)
            for _ in range(3):
                servers.append(SentinelServer(master, service=SERVICE, quorum=2,
                                              down_after_ms=1000,
                                              failover_timeout_ms=3000).start())  # fmt: skip
            group = cls(master, replica, [s for s in servers if isinstance(s, SentinelServer)])
            group.wait_ready()
            return group
        except BaseException:
            for server in reversed(servers):
                server.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(s.address for s in self.sentinels)}/{SERVICE}/0"

    def _in_sync(self) -> bool:
        found = info(self.master.port, "replication")
        return bool(found.get("connected_slaves")) and found["slave0"]["state"] == "online"

    def _sentinels_agree(self) -> bool:
        """Every sentinel names the master, sees the replica up and the two other sentinels."""
        for sentinel in self.sentinels:
            client = admin(sentinel.port)
            try:
                asked = cast(_SentinelCommands, client)
                state = asked.sentinel_master(SERVICE)
                replicas = asked.sentinel_slaves(SERVICE)
            finally:
                client.close()
            if int(state["port"]) != self.master.port or state["num-other-sentinels"] < 2:
                return False
            bad = {"s_down", "o_down", "disconnected"}
            up = [r for r in replicas if int(r["port"]) == self.replica.port
                  and not bad & set(r["flags"].split(","))]  # fmt: skip
            if not up:
                return False
        return True

    def wait_ready(self) -> float:
        """Seconds until the replica is in sync and every sentinel could fail over to it.
        A replica still not in sync after RESYNC_PATIENCE_S is restarted once (as an operator
        would), and `resync_restarts` counts it; a timeout names both servers' state."""
        started = time.monotonic()
        try:
            try:
                wait_until(self._in_sync, "the replica to be in sync", RESYNC_PATIENCE_S)
            except RuntimeError:
                self.resync_restarts += 1
                self.replica.shutdown()
                self.replica.restart_as_replica_of(self.master)
                wait_until(self._in_sync, "the replica to be in sync after a restart")
            wait_until(self._sentinels_agree, "the sentinels to see the replica")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.describe()}") from None
        return time.monotonic() - started

    def describe(self) -> str:
        """Both servers' replication state and the last lines of their logs."""
        parts = []
        for role, server in (("master", self.master), ("replica", self.replica)):
            try:
                state = info(server.port, "replication")
            except Exception as exc:  # down, frozen or loading: say so
                state = {"error": f"{type(exc).__name__}: {exc}"}
            parts.append(f"-- {role} on port {server.port}: {state}\n{server.log_tail()}")
        return "\n".join(parts)

    def fail_over(self, lag_s: float) -> dict[str, Any]:
        """Freeze and cut off the replica for `lag_s` (writes pile up on the master only),
        SIGKILL the master, let the replica go: the sentinels promote it. The old master
        comes back as the new one's replica. What it cost, in figures."""
        old, new = self.master, self.replica
        new.pause()
        try:
            # a frozen replica alone does not lag: the kernel's socket buffers take what the
            # master sends meanwhile, and it reads it all once let go. So the master drops
            # it too (it cannot reconnect while frozen): what is written from now on is on
            # the master only.
            master = admin(old.port)
            try:
                master.client_kill_filter(_type="slave")  # ("replica" is refused by redis-py 5.3)
            finally:
                master.close()
            time.sleep(lag_s)
            offset = int(info(old.port, "replication")["master_repl_offset"])
            old.kill()
        finally:
            new.resume()
        got = int(info(new.port, "replication").get("slave_repl_offset", 0))
        killed = time.monotonic()
        promoted = wait_until(lambda: all(s.master_port() == new.port for s in self.sentinels),
                              "the sentinels to promote the replica")  # fmt: skip
        self.master, self.replica = new, old
        old.restart_as_replica_of(new)
        restarts = self.resync_restarts
        ready = self.wait_ready()
        self.failovers += 1
        return {"fault": "failover", "lag_s": lag_s, "lag_bytes": max(offset - got, 0),
                "promoted_after_s": round(promoted, 2),
                "ready_again_after_s": round(time.monotonic() - killed, 2),
                "resync_s": round(ready, 2),
                "resync_restarts": self.resync_restarts - restarts}  # fmt: skip

    def close(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()


# -- a listener that keeps what it yielded ---------------------------------------------------------
class ListenerLog:
    """`listen()` on every session in a thread; `events` is what it yielded so far."""

    def __init__(self, client: Any, sids: Sequence[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self.error = ""
        self._iter: Iterator[dict[str, Any]] = client.listen(None, after=dict.fromkeys(sids, 0))
        self.thread = threading.Thread(target=self._run, name="soak-listener", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self._iter:
                self.events.append(event)
        except Exception as exc:  # kept for the report: a listener must not die
            self.error = f"{type(exc).__name__}: {exc}"


def listener_figures(
    yielded: Sequence[dict[str, Any]], histories: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """Set what a listener yielded against the final histories: events it yielded that the
    history does not hold (a failover lost them), those a later `listener.gap` of the session
    owned up to, and the rest (silent divergence)."""
    final = {(sid, e["seq"]): (e["type"], e.get("task")) for sid, es in histories.items()
             for e in es}  # fmt: skip
    gaps: dict[str, list[tuple[int, int, int]]] = {}  # session -> (position, from, to)
    for at, event in enumerate(yielded):
        if event["type"] == "listener.gap":
            data = event.get("data") or {}
            gaps.setdefault(event["session"], []).append(
                (at, int(data.get("from_seq", 0)), int(data.get("to_seq", 1 << 62)))
            )
    diverged = owned = 0
    for at, event in enumerate(yielded):
        if event["type"] == "listener.gap":
            continue
        if final.get((event["session"], event["seq"])) == (event["type"], event.get("task")):
            continue
        diverged += 1
        if any(later > at and lo <= event["seq"] <= hi
               for later, lo, hi in gaps.get(event["session"], [])):  # fmt: skip
            owned += 1
    seen = Counter((e["session"], e["seq"]) for e in yielded if e["type"] != "listener.gap")
    return {"yielded": len(yielded), "gaps": sum(len(g) for g in gaps.values()),
            "diverged": diverged, "diverged_owned_by_a_gap": owned,
            "diverged_silently": diverged - owned,
            "seqs_yielded_twice": sum(n > 1 for n in seen.values()),
            "missed": sum((sid, seq) not in seen for sid, seq in final)}  # fmt: skip


# -- a producer adding runs while they drain -------------------------------------------------------
@dataclass
class Stream:
    """Adds its batches of runs one call each, keeping no more than `backlog` runs queued
    (`counts`: the run counts hash); what it was acknowledged and what refused."""

    client: Any
    batches: list[tuple[str, list[Any]]]
    counts: str
    backlog: int = 300
    acked: Counter[str] = field(default_factory=Counter)  # run id -> times acknowledged
    refused: Counter[str] = field(default_factory=Counter)  # error class -> runs
    latencies_ms: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="soak-producer", daemon=True).start()

    def _backlogged(self) -> bool:
        try:
            return int(self.client.redis.hget(self.counts, "queued") or 0) > self.backlog
        except Exception:
            return True

    def _run(self) -> None:
        try:
            for sid, specs in self.batches:
                while self._backlogged() and not self.stop.is_set():
                    time.sleep(POLL_S)
                if self.stop.is_set():
                    return
                started = time.perf_counter()
                try:
                    ids = self.client.add_runs(sid, specs)
                except SessionqError as exc:  # NotReplicated, ConnectionFailed...
                    self.refused[type(exc).__name__] += len(specs)
                    continue
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
                self.acked.update(ids)
        finally:
            self.done.set()

    def figures(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms) or [0.0]
        return {"acknowledged": len(self.acked),
                "acknowledged_twice": sum(n > 1 for n in self.acked.values()),
                "refused": dict(self.refused),
                "add_p50_ms": round(statistics.median(lat), 3),
                "add_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3)}  # fmt: skip


# -- the worker processes under our supervisors ----------------------------------------------------
class PidWatch:
    """Samples the children of the given supervisors: every pid ever seen, for restarts."""

    def __init__(self, supervisors: Any) -> None:
        self.supervisors = supervisors  # () -> set of supervisor pids
        self.seen: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="soak-pids", daemon=True)
        self.thread.start()

    def children(self) -> set[int]:
        ours, found = self.supervisors(), set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in ours:
                found.add(int(stat.parent.name))
        return found

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            self.seen |= self.children()
