"""Registering the dashboard's base URL in Redis, so session records carry `connect_url`.

The URL goes under `Keys.dashboard()` with a TTL that a running dashboard refreshes, so a
dashboard that dies without cleaning up is forgotten within ANNOUNCE_TTL_S. The newest
dashboard wins the key; an older one leaves it alone until it is free again, and one that
stops deletes it only while it still holds its own URL.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError, WatchError

from sessionq.common.keys import Keys

log = logging.getLogger(__name__)
ANNOUNCE_TTL_S = 30.0
REFRESHES_PER_TTL = 3
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


def public_url(host: str, port: int, root_path: str = "", *, scheme: str = "http") -> str:
    """The base URL others should open for a server bound to host:port under root_path."""
    if host in ANY_ADDRESS:
        host = socket.gethostname()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{root_path.rstrip('/')}"


class Announcer:
    """Keeps `url` under the dashboard key while the dashboard runs."""

    def __init__(
        self, redis: AsyncRedis, keys: Keys, url: str, *, ttl_s: float = ANNOUNCE_TTL_S
    ) -> None:
        self.redis = redis
        self.key = keys.dashboard()
        self.url = url
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.period_s = ttl_s / REFRESHES_PER_TTL

    async def announce(self) -> None:
        """Take the key now (a dashboard that starts is the one users want)."""
        await self.redis.set(self.key, self.url, px=self.ttl_ms)
        log.info("dashboard registered as %s under %s", self.url, self.key)

    async def refresh(self) -> None:
        """Extend our registration, or take the key back if it is free."""
        current = await self.redis.get(self.key)
        if current == self.url.encode() and await self.redis.pexpire(self.key, self.ttl_ms):
            return
        if current is None or current == self.url.encode():
            await self.redis.set(self.key, self.url, px=self.ttl_ms, nx=True)
        else:
            log.debug("another dashboard holds %s: %r", self.key, current)

    async def keep(self) -> None:
        """Refresh until cancelled; a lost Redis is logged and retried next period."""
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.refresh()
            except RedisError as exc:
                log.warning("could not refresh the dashboard registration: %s", exc)

    async def withdraw(self) -> None:
        """Delete the key if it still holds our URL."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                await pipe.watch(self.key)
                if await pipe.get(self.key) == self.url.encode():
                    pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                    pipe.delete(self.key)
                    await pipe.execute()
                    log.info("dashboard registration %s removed", self.url)
        except WatchError:
            log.debug("%s changed while withdrawing; left as it is", self.key)
        except RedisError as exc:
            log.warning("could not remove the dashboard registration: %s", exc)
