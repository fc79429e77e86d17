"""The API's Redis connection pool: a deadline on every command, and a bounded number of
connections. And what REDIS_URL means, for the pool and the worker's ARQ settings alike.

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

Past one machine, Redis is a primary, its replica(s) and three sentinels that watch it and
promote a replica when it fails; a client asks a sentinel where the primary is instead of
connecting to a fixed address. redis-py has no URL for that, so this module defines one, read
here (`parse_sentinel_url`) for the API's pool and for the worker's pool (`arq_pool`) alike:

    redis+sentinel://[[user]:password@]host:port[,host:port...]/primary-name[/db]

e.g. `redis+sentinel://10.0.0.5:26379,10.0.0.6:26379,10.0.0.7:26379/jobs/0` (a port left out
is the sentinels' 26379). The password is the primary's; the sentinels are reached without
one (a deployment that protects them too would add redis-py's `sentinel_kwargs`).

Each new connection asks the sentinels where the primary is, within the same deadline;
after a failover, a command on a connection to the old primary fails (refused, or READONLY
from a primary turned replica, which redis-py turns into a ConnectionError and a reconnect),
so a request costs a 503 and the next connection finds the new primary.

A learner may skip this module: every stage with Redis opens one pool in its lifespan with
`open_pool(settings.redis_url, timeout_s=...)`.
"""

import asyncio
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Deserializer, Serializer
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_CONNECTIONS = 64  # per API process
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379  # the sentinels' well-known port
MAX_DB = 2**31 - 1  # Redis' `databases` setting is an int
# How often the API asks the sentinels whether the primary moved (one question, bounded by
# the pool's deadline): bounds the writes a demoted primary can take from this process.
PRIMARY_CHECK_S = 1.0
SENTINEL_TIMEOUT_S = 1.0  # the worker's deadline for each question to a sentinel

logger = logging.getLogger(__name__)


class RedisBusy(RedisConnectionError):
    """Redis answers, but every connection of the pool stayed in use: this process is busy."""


@dataclass(frozen=True)
class SentinelURL:
    sentinels: list[tuple[str, int]]
    primary: str  # the name the sentinels know the primary by (`sentinel monitor <name> ...`)
    db: int = 0
    username: str | None = None
    password: str | None = None


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The sentinels and the primary's name of a `redis+sentinel://` URL; None for any other
    URL. A malformed one is a ValueError that says what is wrong, at start-up."""
    if not url.startswith(f"{SENTINEL_SCHEME}://"):
        return None
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"{SENTINEL_SCHEME} URL: no query or fragment expected in {url!r}")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    path = [piece for piece in parts.path.split("/") if piece]
    if not 1 <= len(path) <= 2:
        raise ValueError(
            f"{SENTINEL_SCHEME} URL: expected /primary-name[/db] after the hosts in {url!r}"
        )
    return SentinelURL(
        sentinels=[sentinel_address(host) for host in hosts.split(",")],
        primary=unquote(path[0]),
        db=database(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
    )


def database(text: str) -> int:
    """The database number: ASCII digits (int() would take "٣" for 3), within Redis' range."""
    if not re.fullmatch("[0-9]+", text):
        raise ValueError(f"{SENTINEL_SCHEME} URL: the database must be a number, not {text!r}")
    if int(text) > MAX_DB:
        raise ValueError(f"{SENTINEL_SCHEME} URL: the database must be at most {MAX_DB}")
    return int(text)


def sentinel_address(host_port: str) -> tuple[str, int]:
    """`host:port` (or `host`, or `[v6]:port`) as a pair; the port 1..65535 in ASCII digits."""
    parts = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::(.*))?", host_port)
    if parts is None:
        raise ValueError(f"{SENTINEL_SCHEME} URL: bad sentinel address {host_port!r}")
    host, port = parts[1].strip("[]"), parts[2]
    if not host:
        raise ValueError(f"{SENTINEL_SCHEME} URL: a sentinel address is empty: {host_port!r}")
    if port is None:
        return host, SENTINEL_PORT
    if not re.fullmatch("[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"{SENTINEL_SCHEME} URL: bad port in {host_port!r} (1 to 65535)")
    return host, int(port)


def arq_settings(url: str) -> RedisSettings:
    """ARQ's RedisSettings for a plain URL (ARQ's own `from_dsn`) or a Sentinel one (ARQ's
    `sentinel=True`, which asks the sentinels for the primary each time it connects; a
    worker connects with `arq_pool` instead, `arq --check` with these)."""
    target = parse_sentinel_url(url)
    if target is None:
        return RedisSettings.from_dsn(url)
    return RedisSettings(
        host=target.sentinels,  # with sentinel=True, ARQ takes the sentinels' addresses
        sentinel=True,
        sentinel_master=target.primary,
        database=target.db,
        username=target.username,
        password=target.password,
    )


def arq_pool(
    url: str, queue_name: str, serializer: Serializer, deserializer: Deserializer
) -> ArqRedis | None:
    """For a worker on a Sentinel-watched primary, the pool ARQ would make from
    `arq_settings(url)`, with deadlines: ARQ's asks the sentinels with no timeout at all, so
    one stuck sentinel (connected, silent) would hold every worker for good. Each question
    to a sentinel gets SENTINEL_TIMEOUT_S (a stuck one is passed over), connecting to the
    primary ARQ's usual conn_timeout; a command on the primary has no deadline, as on a
    plain Redis: a hung primary is failed over, and the worker's watcher leaves.
    None for a plain URL: ARQ connects with `redis_settings` as ever (give ARQ both)."""
    target = parse_sentinel_url(url)
    if target is None:
        return None
    question = {"socket_connect_timeout": SENTINEL_TIMEOUT_S, "socket_timeout": SENTINEL_TIMEOUT_S}
    sentinels = Sentinels(  # type: ignore[no-untyped-call]  # redis-py's is untyped
        target.sentinels,
        sentinel_kwargs=question,
        socket_connect_timeout=RedisSettings().conn_timeout,
        db=target.db,
        username=target.username,
        password=target.password,
    )
    redis: ArqRedis = sentinels.master_for(target.primary, redis_class=ArqRedis)
    redis.default_queue_name = queue_name  # what ARQ's create_pool sets on its own pool
    redis.job_serializer, redis.job_deserializer = serializer, deserializer
    return redis


class Sentinels(Sentinel):
    """redis-py's Sentinel, passing over an address that answers but is not a sentinel (an
    error reply, e.g. a plain Redis's "unknown command 'SENTINEL'") as it passes over one that
    does not answer: with none left, "no primary found", a ConnectionError (a 503), never
    the error reply itself (a 500)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        errors = []
        for n, sentinel in enumerate(self.sentinels):
            try:
                masters = await sentinel.sentinel_masters()  # type: ignore[no-untyped-call]
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            state = masters.get(service_name)
            if state and self.check_master_state(state, service_name):
                # asked first next time, as redis-py does
                self.sentinels[0], self.sentinels[n] = sentinel, self.sentinels[0]
                return state["ip"], state["port"]
        raise MasterNotFoundError(f"No master found for {service_name!r} : {', '.join(errors)}")


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


class BoundedSentinelPool(SentinelConnectionPool, BoundedPool):
    """The same bounded pool, whose connections find the primary through the sentinels.

    redis-py asks the sentinels only when it opens a connection. After a planned failover
    (SENTINEL FAILOVER) the old primary keeps taking writes until the sentinels turn it into
    a replica, seconds later, and then drops them: a pooled connection still open to it would
    lose every job it enqueued meanwhile. So the pool asks again at most every
    PRIMARY_CHECK_S when it hands out a connection, and reconnects one to a moved primary.
    """

    sentinel_manager: Sentinel

    def __init__(self, primary: str, sentinels: Sentinel, **kwargs: Any) -> None:
        super().__init__(primary, sentinels, **kwargs)  # type: ignore[no-untyped-call]
        self.checked_at = 0.0

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        connection = await super().get_connection(*args, **kwargs)
        try:
            if await self.primary_moved(connection):
                await connection.disconnect()
                await connection.connect()  # type: ignore[no-untyped-call]  # asks the sentinels again
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def primary_moved(self, connection: AbstractConnection) -> bool:
        now = time.monotonic()
        if now - self.checked_at >= PRIMARY_CHECK_S:
            self.checked_at = now
            try:
                await self.get_master_address()  # type: ignore[no-untyped-call]  # closes idle ones to the old
            except RedisConnectionError:  # sentinels unreachable: keep the primary we know
                return False
        where = (getattr(connection, "host", None), getattr(connection, "port", None))
        return self.master_address is not None and where != tuple(self.master_address)

    async def aclose(self) -> None:
        await super().aclose()
        for client in self.sentinel_manager.sentinels:
            await client.aclose()


def open_pool(url: str, timeout_s: float) -> BoundedPool:
    """One pool for the whole app: connecting, every command, and the wait for a free
    connection, each bounded by `timeout_s`; a `redis+sentinel://` URL asks the sentinels
    (each question bounded too) where the primary is."""
    deadlines: dict[str, Any] = {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "max_connections": MAX_CONNECTIONS,
        "timeout": timeout_s,
    }
    target = parse_sentinel_url(url)
    if target is None:
        return BoundedPool.from_url(url, **deadlines)
    # Finding the primary asks the sentinels one after the other until one knows: each gets
    # its share of the deadline, so silent sentinels cost no more than one timeout in all.
    share_s = timeout_s / len(target.sentinels)
    sentinels = Sentinels(  # type: ignore[no-untyped-call]  # redis-py's is untyped
        target.sentinels, socket_connect_timeout=share_s, socket_timeout=share_s
    )
    return BoundedSentinelPool(
        target.primary,
        sentinels,
        db=target.db,
        username=target.username,
        password=target.password,
        **deadlines,
    )


def leave_when_primary_moves(redis: Redis) -> asyncio.Task[None] | None:
    """For a worker whose Redis is Sentinel-watched (`arq_pool`): ask the sentinels every
    PRIMARY_CHECK_S where the primary is, and when it is no longer where this worker's
    connections go, stop the worker as SIGTERM does (its running jobs get ARQ's
    job_completion_wait), for its supervisor to start it again on the new primary. Without
    this, after a planned failover the worker polls the old primary, which still answers,
    until the sentinels demote it seconds later. An unexpected error is logged and the
    worker leaves too: a watcher that died would let it stay for good. None for a plain
    Redis; cancel the task at shutdown."""
    pool = redis.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return None
    # Each sentinel answers or is passed over within its own deadline: this is a backstop.
    deadline_s = SENTINEL_TIMEOUT_S * (len(pool.sentinel_manager.sentinels) + 1)

    async def moved() -> bool:
        try:
            now = await asyncio.wait_for(
                pool.sentinel_manager.discover_master(pool.service_name), deadline_s
            )
        except (RedisConnectionError, TimeoutError):  # no sentinel answers: keep our primary
            return False
        return pool.master_address is not None and now != pool.master_address

    async def watch() -> None:
        try:
            while True:
                await asyncio.sleep(PRIMARY_CHECK_S)
                if await moved():
                    break
            logger.info("the primary moved: leaving, to start again on the new one")
        except Exception:
            logger.exception("watching the primary failed: leaving, to start again")
        os.kill(os.getpid(), signal.SIGTERM)  # ARQ's own graceful shutdown

    return asyncio.create_task(watch(), name="leave-when-primary-moves")
