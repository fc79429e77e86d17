"""Server-Sent Event streams of something that changes (a job), bounded in number, with one
poll per thing however many watch it.

A stream holds a connection for as long as it lasts, and each would otherwise poll on its own:
a few hundred idle watchers of one job slowed every other request down, and grew the Redis
pool by a connection each. So:

- `Streams.place(client)`: a stream's place, held while it lasts; beyond MAX_STREAMS open in
  the process, or MAX_STREAMS_PER_CLIENT from one client, an HTTPException 429 with
  Retry-After. The jobs pages' streams (`page=True`) have MAX_PAGE_STREAMS places of their
  own: a hundred open pages leave every place for GET /jobs/{id}/events, and the other way
  round.
- `Streams.follow(key, first, read, ended)`: `first`, then each change `read(key)` finds, until
  `ended(latest)` has held for one more poll (late writes land) or EVENTS_MAX_S passes. Every
  follower of one key is fed by one poll loop for that key.

A learner may skip this module: stages 3 and 4 use it for `GET /jobs/{id}/events`.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from fastapi import HTTPException

T = TypeVar("T")

EVENTS_POLL_S = 0.2  # how often a key's poll looks for a change
EVENTS_MAX_S = 600  # a stream ends after this even if what it follows has not
MAX_STREAMS = 100  # open at once in one process, all clients together
MAX_PAGE_STREAMS = 100  # the jobs pages' streams, counted apart: open pages take no job's place
MAX_STREAMS_PER_CLIENT = 10  # open at once from one client
STREAMS_RETRY_AFTER_S = 5  # what a client refused a stream is asked to wait

RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {"description": "Too many event streams open: this client's, or the server's"}
}


class Poll(Generic[T]):
    """One key's poll loop, shared by everyone following it: it reads every EVENTS_POLL_S and
    wakes the followers after each read, until the last one leaves."""

    def __init__(
        self, key: str, read: Callable[[str], Awaitable[T]], interval: float = EVENTS_POLL_S
    ) -> None:
        self.key = key
        self.read = read
        self.interval = interval
        self.followers = 0
        self.latest: T | None = None  # None: the last read failed (unknown key, store down)
        self.polled = asyncio.Event()  # set after each read, then replaced by a new one
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.latest = await self.read(self.key)
            except Exception:  # the streams end; their clients may ask again
                self.latest = None
            polled, self.polled = self.polled, asyncio.Event()
            polled.set()
            if self.latest is None:
                return

    async def next(self) -> T | None:
        """What the next read finds; None if that read failed."""
        await self.polled.wait()
        return self.latest


class Streams:
    """A process's event streams: how many each client has open, and a poll per followed key."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()  # job streams open, per client
        self.pages: Counter[str] = Counter()  # jobs pages' streams open, per client
        self.polls: dict[str, Poll[Any]] = {}

    @asynccontextmanager
    async def place(self, client: str, page: bool = False) -> AsyncIterator[None]:
        """One stream's place, held while it lasts; a 429 when there is none for `client`.
        A jobs page's stream (`page`) takes one of the MAX_PAGE_STREAMS places of its own."""
        places = self.pages if page else self.open
        most, what = (MAX_PAGE_STREAMS, "jobs pages' ") if page else (MAX_STREAMS, "")
        if places.total() >= most:
            _refuse(f"{most} {what}event streams are open, the most this server keeps")
        if places[client] >= MAX_STREAMS_PER_CLIENT:
            _refuse(f"this client has {MAX_STREAMS_PER_CLIENT} event streams open, the most it may")
        places[client] += 1
        try:
            yield
        finally:
            places[client] -= 1
            if not places[client]:
                del places[client]  # forget the clients down to none

    async def follow(
        self,
        key: str,
        first: T,
        read: Callable[[str], Awaitable[T]],
        ended: Callable[[T], bool],
        interval: float = EVENTS_POLL_S,
    ) -> AsyncIterator[T]:
        """`first`, then the value each time it changes, until it has ended (`read` runs every
        `interval` seconds, once for all the followers of `key`)."""
        poll = self._join(key, read, interval)
        try:
            deadline = time.monotonic() + EVENTS_MAX_S
            latest = first
            yield latest
            while time.monotonic() < deadline:
                found = await poll.next()
                if found is None:
                    return
                if found != latest:
                    latest = found
                    yield latest
                elif ended(latest):  # ended a poll ago: late writes have landed
                    return
        finally:
            self._leave(poll)

    def _join(self, key: str, read: Callable[[str], Awaitable[T]], interval: float) -> Poll[T]:
        poll = self.polls.get(key)
        if poll is None or poll.task.done():  # nobody follows it, or its last read failed
            poll = self.polls[key] = Poll(key, read, interval)
        poll.followers += 1
        return poll

    def _leave(self, poll: Poll[Any]) -> None:
        poll.followers -= 1
        if not poll.followers and self.polls.get(poll.key) is poll:
            poll.task.cancel()
            del self.polls[poll.key]

    def close(self) -> None:
        for poll in self.polls.values():
            poll.task.cancel()


def _refuse(why: str) -> None:
    retry_after = {"Retry-After": str(STREAMS_RETRY_AFTER_S)}
    raise HTTPException(429, f"Too many event streams: {why}", headers=retry_after)
