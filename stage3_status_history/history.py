"""The ledger read back: `GET /jobs`, the job history, and `GET /`, the jobs page, which
hears what changes on one event stream, `GET /events`."""

import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from arq.connections import ArqRedis
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel

from jobkit.dashboard import Feed, page_queue
from jobkit.queue_state import read_queue
from jobkit.streams import RESPONSES as STREAM_LIMITS
from jobkit.streams import Streams

from . import errors
from .deps import ClientDep, FeedDep, LedgerDep, StreamsDep
from .jobs import FINAL, JobView, Status
from .ledger import Ledger
from .tasks import TASKS

PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_CURSOR = 200  # characters; a real cursor is about 90
MAX_JOB_ID = 64
PAGE_SIZES = (PAGE_SIZE, 50, MAX_PAGE_SIZE)  # the page's choices
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(tags=["jobs"])


class JobPage(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None  # pass it back as `cursor` for the next (older) page


# --8<-- [start:cursor]
# The cursor is the (enqueue_time, job_id) of the last job on the page, opaque to clients:
# "older than the last one seen" stays right while new jobs arrive, where an offset would
# shift every page by the number of jobs added meanwhile.
def encode_cursor(record: JobView) -> str:
    key = f"{record.enqueue_time.isoformat()}|{record.job_id}"
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The cursor's (enqueue_time, job_id); ValueError for anything encode_cursor never made."""
    # Bad base64, bytes that are not UTF-8 and a missing "|" are all ValueErrors already.
    when, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
    enqueue_time = datetime.fromisoformat(when)
    if enqueue_time.tzinfo is None:
        raise ValueError("cursor time has no time zone")
    if not (0 < len(job_id) <= MAX_JOB_ID and job_id.isprintable()):
        raise ValueError("cursor job id is not one of ours")
    try:  # 9999-12-31T23:59-14:00 is a valid time with no UTC equivalent
        return enqueue_time.astimezone(UTC), job_id
    except OverflowError:
        raise ValueError("cursor time is out of range") from None


# --8<-- [end:cursor]


@router.get("/jobs", responses={422: {"description": "Bad filter or cursor"}})
async def list_jobs(
    ledger: LedgerDep,
    status: Status | None = None,
    # One of the task names, as a Literal made at import time: FastAPI checks it, mypy can't.
    function: Literal[tuple(TASKS)] | None = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR)] = None,
) -> JobPage:
    """The job history from the ledger, newest first."""
    try:
        after = decode_cursor(cursor) if cursor else None
    except ValueError:
        raise HTTPException(422, "Bad cursor: pass back a next_cursor as given") from None
    records = await ledger.newest(limit + 1, status, function, after)
    more = len(records) > limit
    return JobPage(
        jobs=records[:limit],
        next_cursor=encode_cursor(records[limit - 1]) if more else None,
    )


# --8<-- [start:page]
@router.get("/", response_class=HTMLResponse)
async def jobs_page(request: Request) -> HTMLResponse:
    """The jobs page: its table reads GET /jobs, and GET /events tells it what changes."""
    config = {
        "statuses": list(Status),
        "final": sorted(FINAL),
        "functions": list(TASKS),
        "page_sizes": PAGE_SIZES,
        "worker": f"{__package__}.worker.WorkerSettings",
    }
    return templates.TemplateResponse(request, "jobs.html", {"config": config})


class PageState(BaseModel):
    """What the jobs page hears on GET /events each time it changes."""

    counts: dict[str, int]  # jobs per state
    queue: dict[str, Any] | None  # GET /queue (None: Redis does not answer)
    jobs: list[JobView]  # the newest, the unfinished and the just ended


async def hold_a_page_place(streams: StreamsDep, client: ClientDep) -> AsyncIterator[None]:
    # The pages' streams have places of their own (jobkit.streams): open pages never take
    # the places GET /jobs/{id}/events needs. Held while the response streams, or a 429.
    async with streams.place(client, page=True):
        yield


@router.get("/events", response_class=EventSourceResponse, responses=STREAM_LIMITS)
async def page_events(
    place: Annotated[None, Depends(hold_a_page_place)], feed: FeedDep
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events for the jobs page: counts, queue, workers and the jobs that move."""
    # One stream for the whole page, not one per row: a browser keeps six connections to a
    # server for all its tabs. And one read feeds every open page (jobkit.dashboard).
    async for state in feed.follow():
        yield ServerSentEvent(raw_data=state)


def page_feed(streams: Streams, ledger: Ledger, redis: ArqRedis, queue_name: str) -> Feed:
    """The feed behind GET /events (main.lifespan makes one)."""

    async def read(also: Sequence[str]) -> tuple[PageState, set[str]]:
        counts, jobs = await ledger.page(PAGE_SIZE, also)
        try:
            queue = page_queue(await read_queue(redis, queue_name))
        except (OSError, errors.RedisConnectionError, errors.RedisTimeoutError):
            queue = None
        state = PageState(counts=counts, queue=queue, jobs=jobs)
        return state, {job.job_id for job in jobs if job.status not in FINAL}

    return Feed(streams, read)


# --8<-- [end:page]
