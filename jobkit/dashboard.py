"""The jobs page's machinery: one event stream per open page, fed by one read for all of them,
and the page's script and styles (jobkit/static/), served as plain files: no build step, no
CDN, so the page works on a machine with no network.

- `Feed(streams, read)`: each open page follows one stream (`Feed.follow`) of the page's
  state: what `read(also)` returns (the stage's counts, queue and the jobs that move). One
  read every FEED_POLL_S feeds every open page, however many there are (jobkit.streams), and
  the streams are capped the same way as a job's (a 429 beyond). The state is encoded once
  per read, not once per page.
- A job that ends leaves the unfinished jobs the read selects; the feed asks for it by id
  (`also`) for KEEP_ENDED_S more, so every page sees how it ended.
- The state a page hears carries only the jobs that changed in the last RECENT_S (a page
  reads its table from GET /jobs when it opens, and then needs only what moves): an idle
  queue's state is a few hundred bytes, however many jobs the table shows.
- `Feed.shared(key, read)`: what changes slowly (stage 4's charts and cron runs), read once
  for every page that asks within SHARED_FOR_S: one read in flight per key, and no key waits
  for another's (a stuck Redis holds up the cron runs, not the charts); a failure is kept
  SHARED_FAILED_FOR_S, so the pages asking meanwhile get it at once, not a timeout each.
- `moving_jobs(...)` and `count_by(...)`: the SQL behind that read, the same on SQLite and
  PostgreSQL, each on an index the ledger already has.
- `same_site_only`: a dependency for the page's actions (stage 4's cancel and retry). There
  is no login, so what stops another site's page from making a visitor's browser send them
  is this: a request a browser marks as sent from another site (Sec-Fetch-Site, Origin), or
  with a body only an HTML form sends, gets a JSON 403; so does a browser's request (it
  carries Origin) for a Host that is not an IP address, `localhost` or named in the
  ALLOWED_HOSTS environment variable: a DNS-rebinding site's page is same-origin with
  itself, and only its name gives it away. The page sends JSON from its own origin; curl
  sends neither header, and passes.

A learner may skip this module: stages 3 and 4 use it for `GET /` and `GET /events`.
"""

import asyncio
import ipaddress
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from fastapi import HTTPException, Request
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from jobkit.queue_state import QueueView
from jobkit.streams import Streams

FEED_POLL_S = 0.5  # how often the page's state is read, for all the open pages together
KEEP_ENDED_S = 10.0  # how long a job that has just ended stays in the state
MAX_ENDED = 200  # ended jobs kept in the state at once (a burst of endings: the newest)
MAX_UNFINISHED = 100  # unfinished jobs of each state in the state: a page shows at most 100
RECENT_S = 5.0  # a job stays in the state this long after it last changed
SHARED_FOR_S = 10.0  # a slow-changing read (charts, cron runs) serves the pages this long
SHARED_FAILED_FOR_S = 2.0  # and its failure (Redis down or stuck), so pages don't queue on it
FEED_KEY = "jobs page"  # the streams' key for the page's state (a job's key is its hex id)
STATIC = Path(__file__).parent / "static"
T = TypeVar("T")

# What the stage reads for a page: given the ids of jobs that have just ended, the state
# (a pydantic model) and the ids of the unfinished jobs in it.
PageRead = Callable[[Sequence[str]], Awaitable[tuple[BaseModel, set[str]]]]


def static_files() -> StaticFiles:
    """The page's script and styles, as files (mounted at /static by the stages)."""
    return StaticFiles(directory=STATIC)


class Feed:
    """The page's state for every open page: one read per FEED_POLL_S, one encoding."""

    def __init__(self, streams: Streams, read: PageRead) -> None:
        self.streams = streams
        self.read = read
        self.unfinished: set[str] = set()
        self.ended: dict[str, float] = {}  # job id: until when (time.monotonic) it is kept
        self.changed: dict[str, tuple[str, float]] = {}  # job id: (its JSON, when it changed)
        self.kept: dict[str, asyncio.Future[Any]] = {}  # Feed.shared: key: its (last) read
        self.read_at: dict[str, float] = {}  # Feed.shared: key: when its last read ended

    async def follow(self) -> AsyncIterator[str]:
        """The state as JSON now, then each time it changes (until EVENTS_MAX_S: the browser
        reconnects by itself)."""
        first = await self._read(FEED_KEY)
        async for state in self.streams.follow(
            FEED_KEY, first, self._read, ended=_never, interval=FEED_POLL_S
        ):
            yield state

    async def shared(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """`read()`'s value, read again only once SHARED_FOR_S has passed (after a failure,
        once SHARED_FAILED_FOR_S has): every open page asks every so often, and one read
        answers them all. Each key has a read of its own, so a stuck one holds up no other."""
        if self._stale(key):
            reading = self.kept[key] = asyncio.ensure_future(read())
            reading.add_done_callback(lambda _: self.read_at.__setitem__(key, time.monotonic()))
        # Shielded: a page that leaves while it waits must not cancel the others' read.
        value: T = await asyncio.shield(self.kept[key])
        return value

    def _stale(self, key: str) -> bool:
        kept = self.kept.get(key)
        if kept is None or not kept.done():
            return kept is None  # never read, or being read: wait for that read
        failed = kept.cancelled() or kept.exception() is not None
        fresh_for = SHARED_FAILED_FOR_S if failed else SHARED_FOR_S
        return time.monotonic() - self.read_at[key] > fresh_for

    async def _read(self, key: str) -> str:
        now = time.monotonic()
        kept = sorted(self.ended.items(), key=lambda item: item[1])[-MAX_ENDED:]
        self.ended = {job_id: until for job_id, until in kept if until > now}
        state, unfinished = await self.read(list(self.ended))
        for job_id in self.unfinished - unfinished:
            self.ended.setdefault(job_id, now + KEEP_ENDED_S)
        self.unfinished = unfinished
        fields = state.model_dump(mode="json")
        fields["jobs"] = self._recent(fields["jobs"], now)
        return json.dumps(fields)  # once per read, not once per page

    def _recent(self, jobs: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """The jobs that changed in the last RECENT_S."""
        changed = {}
        for job in jobs:
            encoded = json.dumps(job, sort_keys=True)
            before = self.changed.get(job["job_id"])
            changed[job["job_id"]] = before if before and before[0] == encoded else (encoded, now)
        self.changed = changed
        return [job for job in jobs if now - changed[job["job_id"]][1] <= RECENT_S]


def _never(state: str) -> bool:
    return False


def moving_jobs(
    jobs: sa.Table, unfinished: Collection[str], newest: int, also: Sequence[str]
) -> sa.Select[Any]:
    """The jobs a page must hear about, newest first: the `newest` few (a new job appears),
    the unfinished ones (up to MAX_UNFINISHED in each unfinished state: their bars move) and
    `also`, by id."""
    ids = jobs.c.job_id
    order = (jobs.c.enqueue_time.desc(), ids.desc())
    newest_ids = sa.select(ids).order_by(*order).limit(newest)  # index jobs_newest_first
    # A limit per state, on the status index: one limit for them all let a thousand deferred
    # jobs crowd out the few running ones, whose bars then froze.
    unfinished_ids = [
        ids.in_(sa.select(ids).where(jobs.c.status == status).limit(MAX_UNFINISHED))
        for status in sorted(unfinished)
    ]
    wanted = sa.or_(ids.in_(newest_ids), *unfinished_ids, ids.in_(list(also)))
    return jobs.select().where(wanted).order_by(*order)


def count_by(connection: sa.Connection, column: sa.Column[Any]) -> dict[str, int]:
    """How many rows have each value of `column` (the status: the page's counts)."""
    query = sa.select(column, sa.func.count()).group_by(column)
    return {value: count for value, count in connection.execute(query)}


def page_queue(view: QueueView) -> dict[str, Any]:
    """The queue as the page shows it: ages to the whole second, so an idle queue's state
    changes about once a second, not at every read."""
    queue = dict(vars(view))
    if queue["oldest_ready_age_s"] is not None:
        queue["oldest_ready_age_s"] = round(queue["oldest_ready_age_s"])
    queue["workers"] = [
        {**vars(worker), "last_seen_s": round(worker.last_seen_s)} for worker in view.workers
    ]
    return queue


# What a plain HTML form can send (its enctype): anything else makes a browser ask the server
# first (a CORS preflight), which this app never grants to another site.
FORM_BODIES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
OTHER_SITES = frozenset({"cross-site", "same-site"})  # Sec-Fetch-Site: not our own origin
# The environment variable listing the names, besides IP addresses and localhost, that the
# browser may call this server by when it sends an action (comma-separated): a real
# deployment's own name. A real application would keep it with its other settings.
ALLOWED_HOSTS = "ALLOWED_HOSTS"
SAME_SITE_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"description": "Sent from another site's page, or with a form's body"}
}


async def same_site_only(request: Request) -> None:
    """A JSON 403 for an action another site's page may have made the browser send."""
    own_origin = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    body_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.headers.get("sec-fetch-site") in OTHER_SITES or origin not in (None, own_origin):
        raise HTTPException(403, "Refused: sent from another site's page")
    if origin is not None and not our_name(request.url.hostname or ""):
        # DNS rebinding: a site that points its own name at this server's address is
        # same-origin with itself; only the name it used, in Host, gives it away.
        raise HTTPException(
            403, f"Refused: {request.url.hostname} is not one of this server's names"
        )
    if body_type in FORM_BODIES:
        raise HTTPException(403, "Refused: an action takes no form body (send JSON, or none)")


def our_name(host: str) -> bool:
    """An IP address, localhost, or a name the ALLOWED_HOSTS setting lists."""
    allowed = {name.strip().lower() for name in os.environ.get(ALLOWED_HOSTS, "").split(",")}
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in ({"localhost"} | allowed) - {""}
    return True
