"""A Redis connection whose every command has a deadline, for one timer per connection.

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

from .errors import RedisTimeoutError


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


# --8<-- [start:pool]
def pool(url: str, timeout_s: float) -> ConnectionPool:
    """The API's connection pool: connecting, and every command after, bounded by `timeout_s`."""
    return ConnectionPool.from_url(
        url,
        socket_connect_timeout=timeout_s,
        connection_class=DeadlineConnection,
        command_timeout=timeout_s,
    )


# --8<-- [end:pool]
