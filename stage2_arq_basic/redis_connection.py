"""A Redis connection whose every command has a deadline, for one timer per connection, and
a pool that holds a bounded number of them.

redis-py can do this itself: `ConnectionPool(..., socket_timeout=1.0)` bounds every write and
every read. But it arms a new asyncio timer for each: nine for one enqueue (WATCH, EXISTS,
then MULTI/PSETEX/ZADD/EXEC sent at once and their four replies), and on Python 3.11 it starts
a task for each write as well. Counted with callgrind (on uvloop, as uvicorn runs), that was
16 % of the instructions this process ran per enqueue; with one timer per connection it is
3 %, and stage 2 enqueues 18 % more per second (paired wrk rounds, as `make bench` runs them).
The guarantee is the same: a Redis that is down or stuck costs a command `command_timeout`
seconds and a TimeoutError (a 503, errors.py), not a hang.
"""

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Connection, ConnectionPool

from .errors import RedisBusy, RedisTimeoutError

# At most this many connections to Redis per API process. A request holds one only while a
# command runs, so this many are in use only under a burst; beyond them a command waits for
# one, up to its timeout, then gets a 503. Unbounded, a burst opened a connection each, and
# kept them all open after.
MAX_CONNECTIONS = 64


class DeadlineConnection(Connection):
    """redis-py's connection, with one timer per connection rather than one per command.

    A command only notes its deadline as it starts to wait. The timer fires at the deadline it
    last saw: if a command is still waiting past its own, the timer cuts the connection, and
    that command fails at once; if not, the timer sleeps until the deadline now due, or, with
    nothing waiting, stops until the next command. A cut connection, with any reply still on
    its way to it, is dropped and never used again: a reply read by the wrong command was
    redis-py's CVE-2023-28858.
    """

    def __init__(self, *, command_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.command_timeout = command_timeout
        self.deadline: float | None = None  # when the write or read now waiting gives up
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False  # the timer cut the connection under the waiting command

    def start_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + self.command_timeout
        if self.timer is None:
            self.timer = loop.call_at(self.deadline, self.check_clock)

    def check_clock(self) -> None:
        self.timer = None
        if self.deadline is None:
            return  # nothing waiting: the next command starts the clock again
        loop = asyncio.get_running_loop()
        if loop.time() < self.deadline:
            self.timer = loop.call_at(self.deadline, self.check_clock)
        elif self._writer is not None:
            self.expired = True
            self._writer.transport.abort()  # the waiting read or write ends at once

    async def stop_clock(self) -> None:
        self.deadline = None
        if self.expired:
            self.expired = False
            await self.disconnect(nowait=True)
            task = asyncio.current_task()
            if task is None or not task.cancelling():  # a cancel that came meanwhile wins
                raise RedisTimeoutError(f"Redis did not answer within {self.command_timeout} s")

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect()  # its own timeout; the commands it sends start their clocks
        self.start_clock()
        try:
            await super().send_packed_command(command, check_health)
        finally:
            await self.stop_clock()

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self.start_clock()
        try:
            return await super().read_response(*args, **kwargs)
        finally:
            await self.stop_clock()


class PoolFull(Exception):
    """Every connection is in use: wait for one (BoundedPool)."""


class BoundedPool(ConnectionPool):
    """redis-py's pool, where a command that finds every connection in use waits for one, for
    up to `wait_s`, then fails with RedisBusy. (redis-py's own pool fails it at once; its
    BlockingConnectionPool waits, but arms a timer for every command, busy or not.)"""

    def __init__(self, *, wait_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_s, self.waiting = wait_s, 0
        self.freed = asyncio.Condition()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        deadline = None
        while True:
            try:
                return await super().get_connection(*args, **kwargs)
            except PoolFull:  # rare, and only then a deadline and a wait
                deadline = deadline or asyncio.get_running_loop().time() + self.wait_s
                await self.wait_until_freed(deadline)

    def get_available_connection(self) -> Any:
        if not self.can_get_connection():  # where redis-py's raises "Too many connections"
            raise PoolFull
        return super().get_available_connection()

    async def wait_until_freed(self, deadline: float) -> None:
        self.waiting += 1
        try:
            async with self.freed, asyncio.timeout_at(deadline):
                await self.freed.wait()
        except TimeoutError:
            busy = f"all {self.max_connections} Redis connections stayed in use {self.wait_s:g} s"
            raise RedisBusy(busy) from None
        finally:
            self.waiting -= 1

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        if self.waiting:  # wake one waiting command
            async with self.freed:
                self.freed.notify()


# --8<-- [start:pool]
def pool(url: str, timeout_s: float) -> ConnectionPool:
    """The API's connection pool: connecting, and every command after, bounded by `timeout_s`,
    and so is the wait for a connection when all MAX_CONNECTIONS are in use."""
    return BoundedPool.from_url(
        url,
        socket_connect_timeout=timeout_s,
        connection_class=DeadlineConnection,
        command_timeout=timeout_s,
        max_connections=MAX_CONNECTIONS,
        wait_s=timeout_s,
    )


# --8<-- [end:pool]
