"""Connection settings and tunables: the one place that reads the environment (SPEC §1)."""

from __future__ import annotations

import getpass
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from sessionq.common.errors import ConfigError

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "sq:"
PREFIX_RE = re.compile(r"[A-Za-z0-9_.:{}-]{1,64}")
MAX_PAYLOAD_BYTES = 512 * 1024
# what reaches Redis, kept from a command run's environment (SPEC §9; and every SESSIONQ_*)
REDIS_VARIABLES = frozenset({"SESSIONQ_URL", "REDIS_URL", "RQ_KEY_PREFIX"})

_INT_KNOBS = {
    "history_cap": "SESSIONQ_HISTORY_CAP",
    "logs_cap": "SESSIONQ_LOGS_CAP",
    "claim_batch_max": "SESSIONQ_CLAIM_BATCH_MAX",
    "destroyed_history_ttl_s": "SESSIONQ_DESTROYED_HISTORY_TTL_S",
    "result_max_bytes": "SESSIONQ_RESULT_MAX_BYTES",
    "max_jobs": "SESSIONQ_MAX_JOBS",
}
_ZERO_KNOBS = {  # 0 allowed: off, or the default
    "wait_replicas": "SESSIONQ_WAIT_REPLICAS",
    "partitions": "SESSIONQ_PARTITIONS",
}
# partitions of a namespace on a Redis Cluster unless SESSIONQ_PARTITIONS says (SPEC §9):
# enough for every master of a small cluster to hold several (keys.Layout spreads them evenly
# over the slots), few enough that a worker's connection per partition stays cheap
CLUSTER_PARTITIONS = 16
# the default prefix on a Redis Cluster with one partition: a hash tag keeps it in one slot
ONE_SLOT_PREFIX = "{sq}:"
HASH_TAG_RE = re.compile(r"[^{]*\{[^}]+\}")
MAX_PARTITIONS = 256  # a session id's first byte names its partition (keys.Layout)
CLUSTER_URL_SUFFIX = "+cluster"  # redis+cluster://, rediss+cluster://
MAX_WAIT_REPLICAS = 64
_FLOAT_KNOBS = {
    "wait_timeout_s": "SESSIONQ_WAIT_TIMEOUT_S",
    "heartbeat_interval_s": "SESSIONQ_HEARTBEAT_INTERVAL_S",
    "heartbeat_ttl_s": "SESSIONQ_HEARTBEAT_TTL_S",
    "stop_grace_s": "SESSIONQ_STOP_GRACE_S",
    "reap_interval_s": "SESSIONQ_REAP_INTERVAL_S",
    "scheduler_interval_s": "SESSIONQ_SCHEDULER_INTERVAL_S",
    "retry_budget_s": "SESSIONQ_RETRY_BUDGET_S",
    "retention_s": "SESSIONQ_RETENTION_S",
}


def is_cluster_url(url: str) -> bool:
    """Is `url` a Redis Cluster's (redis+cluster://, rediss+cluster://)?"""
    return url.partition("://")[0].lower().endswith(CLUSTER_URL_SUFFIX)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything configurable, built once at an entry point and passed down."""

    url: str = DEFAULT_URL
    url_configured: bool = False
    prefix: str = DEFAULT_PREFIX
    user: str = field(default_factory=_os_user)
    # Events kept per session for late listeners (SPEC §5); older ones are dropped.
    history_cap: int = 5000
    # Log lines kept per session.
    logs_cap: int = 20000
    # A worker refreshes its heartbeat this often ...
    heartbeat_interval_s: float = 1.0
    # ... and is declared lost (its runs recovered) when it is this late.
    heartbeat_ttl_s: float = 10.0
    # Time a stopped run gets between the polite signal and the kill.
    stop_grace_s: float = 5.0
    # How often a worker looks for lost workers.
    reap_interval_s: float = 2.0
    # How often the workers' scheduler looks for due runs (one worker at a time, by lock);
    # runs waiting on dependencies are re-judged every 10 of these as a backstop.
    scheduler_interval_s: float = 0.5
    # Most runs a worker claims in one round trip (adaptive, see worker.loop).
    claim_batch_max: int = 32
    # Runs in flight per worker process (`sessionq worker --max-jobs`): async functions on
    # its event loop, plain functions and commands in a pool of this many threads.
    max_jobs: int = 1
    # A destroyed session's event history stays this long for late listeners.
    destroyed_history_ttl_s: int = 3600
    # A run's return value, msgpack-encoded, may be this big; a bigger one fails the run.
    result_max_bytes: int = 1024 * 1024
    # An acknowledged create, add or run end waits until this many replicas have it (WAIT),
    # and a worker starts a claimed run only once its claim has; 0: no waiting (SPEC §9).
    wait_replicas: int = 0
    # ... for at most this long: then a producer call raises NotReplicated, and a worker
    # holds the run back and asks again.
    wait_timeout_s: float = 1.0
    # How long one call keeps trying (with backoff) while Redis cannot be reached, before it
    # raises ConnectionFailed: longer than a Sentinel failover with Sentinel's defaults
    # (down-after-milliseconds 30 s, then the election and the promotion).
    retry_budget_s: float = 60.0
    # A session made by create() is removed, with everything under it (its history too),
    # this long after it ended (SPEC §9 Retention); persistent ones: SessionConfig.retention_s.
    retention_s: float = 604800.0
    # The namespace's partitions (SESSIONQ_PARTITIONS, a power of two up to 256): each a hash
    # tag, so that a session and everything of it live in one cluster slot (keys.Layout).
    # 0: CLUSTER_PARTITIONS on a Redis Cluster, 1 (today's key names, no tag) on one Redis.
    partitions: int = 0

    def __post_init__(self) -> None:
        if not PREFIX_RE.fullmatch(self.prefix):
            raise ConfigError(f"prefix {self.prefix!r}: 1-64 of letters, digits and _ . : - {{ }}")
        if not self.user or len(self.user) > 64:
            raise ConfigError(f"user {self.user!r}: 1-64 characters")
        if not 0 <= self.wait_replicas <= MAX_WAIT_REPLICAS:
            raise ConfigError(f"wait_replicas must be 0-{MAX_WAIT_REPLICAS}, "
                              f"got {self.wait_replicas!r}")  # fmt: skip
        knobs = {**_INT_KNOBS, **_FLOAT_KNOBS, **_ZERO_KNOBS}  # (each with its variable)
        for name in (*_INT_KNOBS, *_FLOAT_KNOBS):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} ({knobs[name]}) must be positive, "
                                  f"got {getattr(self, name)!r}")  # fmt: skip
        if self.heartbeat_ttl_s <= 2 * self.heartbeat_interval_s:
            raise ConfigError("heartbeat_ttl_s must exceed twice heartbeat_interval_s")
        count = self.partitions
        if not 0 <= count <= MAX_PARTITIONS or count & (count - 1):
            var = knobs["partitions"]
            raise ConfigError(f"partitions ({var}) must be a power of two up to "
                              f"{MAX_PARTITIONS} (or 0: the default), got {count!r}")  # fmt: skip
        if self.partition_count > 1 and ("{" in self.prefix or "}" in self.prefix):
            raise ConfigError(f"prefix {self.prefix!r}: no {{ }} with partitions: each "
                              "partition is a hash tag of its own")  # fmt: skip
        if self.clustered and self.partition_count == 1 and not HASH_TAG_RE.match(self.prefix):
            raise ConfigError(f"prefix {self.prefix!r}: on a Redis Cluster with one partition "
                              f"the prefix needs a hash tag, e.g. {ONE_SLOT_PREFIX!r}")  # fmt: skip

    @property
    def clustered(self) -> bool:
        """Is the URL a Redis Cluster's (redis+cluster://, rediss+cluster://)?"""
        return is_cluster_url(self.url)

    @property
    def partition_count(self) -> int:
        """How many partitions the namespace has (see `partitions`)."""
        return self.partitions or (CLUSTER_PARTITIONS if self.clustered else 1)

    @property
    def heartbeat_late_s(self) -> float:
        """A heartbeat older than this is late: its worker may be gone (it is declared lost
        only after heartbeat_ttl_s); no run is handed to it meanwhile."""
        return 2 * self.heartbeat_interval_s + 0.5

    def redis_secrets(self) -> set[str]:
        """The Redis password(s) the URL carries (its user:password@, a ...password= query
        argument), as given and as URL-decoded."""
        parts = urlsplit(self.url)
        found = [parts.netloc.rpartition("@")[0].partition(":")[2]]
        found += [v for k, v in parse_qsl(parts.query) if k.lower().endswith("password")]
        secrets = {variant for raw in found for variant in (raw, unquote(raw), quote(raw))}
        return {s for s in secrets if s}

    def command_environ(self, environ: Mapping[str, str]) -> dict[str, str]:
        """`environ` (the worker's environment) as a command run gets it (SPEC §9): without
        what reaches Redis - SESSIONQ_URL, REDIS_URL, RQ_KEY_PREFIX, every SESSIONQ_* setting
        - and without any variable whose value holds the Redis password."""
        secrets = self.redis_secrets()
        return {
            key: value
            for key, value in environ.items()
            if key not in REDIS_VARIABLES
            and not key.startswith("SESSIONQ_")
            and not any(secret in value for secret in secrets)
        }

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        *,
        prefix: str | None = None,
        user: str | None = None,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Explicit arguments first, then SESSIONQ_* / REDIS_URL, then the defaults."""
        env = os.environ if environ is None else environ
        found_url = url or env.get("SESSIONQ_URL") or env.get("REDIS_URL")
        values: dict[str, Any] = {
            "url": found_url or DEFAULT_URL,
            "url_configured": bool(found_url),
            "prefix": prefix or env.get("SESSIONQ_PREFIX") or DEFAULT_PREFIX,
            "user": user or env.get("SESSIONQ_USER") or _os_user(),
        }
        for knobs, kind in ((_INT_KNOBS, int), (_FLOAT_KNOBS, float), (_ZERO_KNOBS, int)):
            for name, var in knobs.items():
                if var in env:
                    try:
                        values[name] = kind(env[var])
                    except ValueError as exc:
                        raise ConfigError(f"{var}={env[var]!r} is not a number") from exc
        values.update(overrides)
        chosen = prefix or env.get("SESSIONQ_PREFIX") or overrides.get("prefix")
        one_slot = (values.get("partitions") or CLUSTER_PARTITIONS) == 1
        if not chosen and one_slot and is_cluster_url(values["url"]):
            values["prefix"] = ONE_SLOT_PREFIX
        return cls(**values)

    def for_worker(self) -> Settings:
        """The settings a worker process's clients use: a call gives up within a heartbeat
        interval (not SESSIONQ_RETRY_BUDGET_S), for the worker's own loops back off and carry
        on - a heartbeat held up in a client's retries for a minute would look like a lost
        worker."""
        return replace(self, retry_budget_s=min(self.retry_budget_s, self.heartbeat_interval_s))

    def with_url(self, url: str) -> Settings:
        return replace(self, url=url, url_configured=True)


def export_rq_prefix(prefix: str) -> str:
    """Point RQ's key prefix (read once, at RQ's import) at ours; return what RQ will use."""
    rq_prefix = f"{prefix}rq"
    os.environ["RQ_KEY_PREFIX"] = rq_prefix
    return rq_prefix


def exported_rq_prefix() -> str | None:
    return os.environ.get("RQ_KEY_PREFIX")
