"""The API's Redis connection pool: a deadline on every command, and a bounded number of
connections.

A Redis that is down, or stuck (connected but silent: a SIGSTOPped server, a full network
buffer), would otherwise hold a request until the client gives up. With these timeouts a
command fails in about `timeout_s` with redis-py's TimeoutError or ConnectionError, which the
stages answer with a 503. redis-py drops a connection whose command timed out rather than
reuse it (a reply arriving late on a reused connection would be read by the next command:
CVE-2023-28858).

The pool holds at most MAX_CONNECTIONS. A request holds one only while a command runs, so
they are all in use only under a burst; then a command waits for one, up to `timeout_s`, and
fails with RedisBusy (a ConnectionError). Unbounded, a burst opens a connection per request
and keeps them all open afterwards.

A learner may skip this module: every stage with Redis opens one pool in its lifespan with
`open_pool(settings.redis_url, timeout_s=...)`.
"""

import asyncio
from typing import Any

from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

MAX_CONNECTIONS = 64  # per API process


class RedisBusy(RedisConnectionError):
    """Redis answers, but every connection of the pool stayed in use: this process is busy."""


class BoundedPool(BlockingConnectionPool):
    """redis-py's blocking pool, telling a full pool (RedisBusy) from a Redis that is down,
    and counting the commands that wait for a connection now."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.waiting = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        full = not self.can_get_connection()
        self.waiting += full
        try:
            connection: AbstractConnection = await super().get_connection(*args, **kwargs)
        except RedisConnectionError as exc:
            if isinstance(exc.__cause__, asyncio.TimeoutError):  # waited for a connection
                used = f"all {self.max_connections} Redis connections"
                raise RedisBusy(f"{used} stayed in use {self.timeout:g} s") from None
            raise
        finally:
            self.waiting -= full
        return connection


def open_pool(url: str, timeout_s: float) -> BoundedPool:
    """One pool for the whole app: connecting, every command, and the wait for a free
    connection, each bounded by `timeout_s`."""
    return BoundedPool.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        max_connections=MAX_CONNECTIONS,
        timeout=timeout_s,
    )
