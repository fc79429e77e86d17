"""The API's Redis connection pool, with a deadline on every command.

A Redis that is down, or stuck (connected but silent: a SIGSTOPped server, a full network
buffer), would otherwise hold a request until the client gives up. With these timeouts a
command fails in about `timeout_s` with redis-py's TimeoutError or ConnectionError, which the
stages answer with a 503. redis-py drops a connection whose command timed out rather than
reuse it (a reply arriving late on a reused connection would be read by the next command:
CVE-2023-28858).

A learner may skip this module: every stage with Redis opens one pool in its lifespan with
`open_pool(settings.redis_url, timeout_s=...)`.
"""

from redis.asyncio import ConnectionPool


def open_pool(url: str, timeout_s: float) -> ConnectionPool:
    """One pool for the whole app: connecting, and every command after, bounded by `timeout_s`."""
    return ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
    )
