"""Event streams (`GET /jobs/{id}/events`): bounded in number, and one poll per job however
many watch it.

A stream holds a connection for as long as it lasts, and each used to poll its job on its
own: a few hundred idle watchers of one job slowed every other request down. So the app
caps the streams open at once, per client and in all (a 429 beyond), and every watcher of a
job is fed by one poll loop for that job, which hands each change to all of them.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import HTTPException

from .jobs import FINAL, JobView

# --8<-- [start:limits]
EVENTS_POLL_S = 0.2  # how often a job's poll looks for a change in it
EVENTS_MAX_S = 600  # a stream ends after this even if the job has not
MAX_STREAMS = 100  # open at once in one API process, all clients together
MAX_STREAMS_PER_CLIENT = 10  # open at once from one client (the jobs page opens three)
STREAMS_RETRY_AFTER_S = 5  # what a client refused a stream is asked to wait
# --8<-- [end:limits]

RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {"description": "Too many event streams open: this client's, or the server's"}
}
Read = Callable[[str], Awaitable[JobView]]  # the job as GET /jobs/{id} answers it


class JobPoll:
    """One job's poll loop, shared by everyone watching the job: it reads the job every
    EVENTS_POLL_S and wakes the watchers after each read."""

    def __init__(self, job_id: str, read: Read) -> None:
        self.job_id, self.read, self.watchers = job_id, read, 0
        self.latest: JobView | None = None  # None: the last read failed (unknown job, Redis down)
        self.polled = asyncio.Event()  # set after each read, then replaced by a new one
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:  # until the last watcher leaves (Streams.left cancels it)
        while True:
            await asyncio.sleep(EVENTS_POLL_S)
            try:
                self.latest = await self.read(self.job_id)
            except Exception:  # the streams end; their clients may ask again
                self.latest = None
            polled, self.polled = self.polled, asyncio.Event()
            polled.set()
            if self.latest is None:
                return

    async def next(self) -> JobView | None:
        """The job as the next read finds it; None if that read failed."""
        await self.polled.wait()
        return self.latest


class Streams:
    """The app's event streams: how many each client has open, and a poll per watched job."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()
        self.polls: dict[str, JobPoll] = {}

    @asynccontextmanager
    async def place(self, client: str) -> AsyncIterator[None]:
        """One stream's place, held while it lasts; a 429 when there is none for `client`."""
        if self.open.total() >= MAX_STREAMS:
            refuse(f"{MAX_STREAMS} event streams are open, the most this server keeps")
        if self.open[client] >= MAX_STREAMS_PER_CLIENT:
            refuse(f"this client has {MAX_STREAMS_PER_CLIENT} event streams open, the most it may")
        self.open[client] += 1
        try:
            yield
        finally:
            self.open[client] -= 1
            self.open = +self.open  # forget the clients down to none

    # --8<-- [start:follow]
    async def follow(self, job: JobView, read: Read) -> AsyncIterator[JobView]:
        """`job`, then its state each time it changes, until it has finished."""
        poll = self.joined(job.job_id, read)
        try:
            deadline = time.monotonic() + EVENTS_MAX_S
            yield job
            while time.monotonic() < deadline:
                if (latest := await poll.next()) is None:
                    return
                if latest != job:
                    job = latest
                    yield job
                elif job.status in FINAL:  # ended a poll ago: the worker's late writes are in
                    return
        finally:
            self.left(poll)

    # --8<-- [end:follow]

    def joined(self, job_id: str, read: Read) -> JobPoll:
        poll = self.polls.get(job_id)
        if poll is None or poll.task.done():  # no one watches it, or its last read failed
            poll = self.polls[job_id] = JobPoll(job_id, read)
        poll.watchers += 1
        return poll

    def left(self, poll: JobPoll) -> None:
        poll.watchers -= 1
        if not poll.watchers and self.polls.get(poll.job_id) is poll:
            poll.task.cancel()
            del self.polls[poll.job_id]

    def close(self) -> None:
        for poll in self.polls.values():
            poll.task.cancel()


def refuse(why: str) -> None:
    retry_after = {"Retry-After": str(STREAMS_RETRY_AFTER_S)}
    raise HTTPException(429, f"Too many event streams: {why}", headers=retry_after)
