"""Stage 4: retries, scheduling, cancel and idempotency, on top of stage 3's ledger.

What it adds, a module each: fetch's retries with backoff and the SSRF guard (fetch.py), a
log of every try (the worker's hooks, tables.py), `run_at`/`delay_seconds` (scheduling.py),
the `Idempotency-Key` header (idempotency.py), `DELETE /jobs/{id}` (cancel.py) and
`POST /jobs/{id}/retry` (retry.py), also from the jobs page, a timeout per task (tasks.py)
and graceful shutdown (worker.py), and a cron job for the ledger (maintenance.py). And
operating it: Prometheus `/metrics` on the API and each worker, optional traces and JSON
logs (jobkit.observe; docs: "Operating it").

Run it:
    make run STAGE=4
    # or by hand, with a Redis at REDIS_URL (default redis://127.0.0.1:6379/0):
    uvicorn stage4_retries_scheduling.main:app --port 8000
    arq stage4_retries_scheduling.worker.WorkerSettings

What it leaves out, on purpose: authentication, a retry policy for tasks other than fetch,
and separate queues for slow and fast work (docs: "Going to production").
"""

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, FastAPI, HTTPException, Path, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from jobkit import observe
from jobkit.dashboard import SAME_SITE_ONLY, same_site_only, static_files
from jobkit.heartbeat import live_workers, workers_seen
from jobkit.http import BODY_ERRORS, refuse_bad_input
from jobkit.queue_state import QueueView, read_queue
from jobkit.redis_pool import open_pool
from jobkit.streams import RESPONSES as STREAM_LIMITS
from jobkit.streams import Streams
from jobkit.tuning import freeze_startup_objects

from . import cancel, errors, history, idempotency, jobs, retry
from .config import Settings, get_settings
from .deps import (
    ClientDep,
    LedgerDep,
    RedisDep,
    ScheduleDep,
    SettingsDep,
    StreamPlaceDep,
    StreamsDep,
    get_redis,
)
from .jobstore import create_job, read_job
from .ledger import Ledger
from .tasks import TASKS, Args


class Enqueued(BaseModel):
    job_id: str
    status_url: str
    detail: str | None = None  # only when there is something to say: a run_at already past


RUNS_NOW = "run_at is in the past: the job runs now"


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One connection pool for the whole app, opened once and shared by every request (a pool
    # per request, which many tutorials open, costs a TCP handshake each time and leaks connections
    # under load). Built by hand rather than with arq's create_pool so that every command has a
    # timeout (jobkit/redis_pool.py): a Redis that is down or stuck costs a request about a
    # second and a 503, not a hang.
    settings = get_settings()
    pool = open_pool(settings.redis_url, timeout_s=settings.redis_timeout_s)
    app.state.redis = ArqRedis(
        pool,
        job_serializer=observed.serializer(jobs.serialize),  # carries the trace, if any
        job_deserializer=jobs.deserialize,
        default_queue_name=settings.queue_name,
    )
    app.state.ledger = Ledger(settings.database_url)
    await asyncio.to_thread(app.state.ledger.create_schema)
    app.state.streams = Streams()  # event streams: one poll per job (or page), capped
    app.state.feed = history.page_feed(  # GET /events: the jobs page's one stream
        app.state.streams, app.state.ledger, app.state.redis, settings.queue_name
    )
    # What start-up made lives as long as the app (the ORM's tables, compiled statements):
    # jobkit.tuning takes it out of the garbage collector's full scans, which stall requests.
    freeze_startup_objects()
    try:
        yield
    finally:
        app.state.streams.close()
        await app.state.redis.aclose()
        await pool.aclose()
        app.state.ledger.close()
        observed.shutdown()


logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
# Seeing the queue (jobkit.observe): GET /metrics, FastAPI's own HTTP metrics and spans, and a
# span for each enqueue, in the trace the worker's tries continue; each as the settings ask.
observed = observe.Api(
    get_settings().queue_name,
    metrics=get_settings().metrics,
    tracing=get_settings().tracing,
    json_logs=get_settings().json_logs,
)
# FastAPIOffline is FastAPI whose /docs and /redoc load their files from this machine, not a CDN.
app = FastAPIOffline(
    title=get_settings().app_name,
    description=get_settings().app_description,
    lifespan=lifespan,
    telemetry=observed.telemetry(),
)
# Armour every app needs and this chapter doesn't teach (jobkit/http.py): a JSON 413 for an
# oversized body, and a 422 that never echoes the bad input back.
refuse_bad_input(app, get_settings().max_body_bytes)
errors.install(app)  # Redis or the database down: a 503 (errors.py)


@app.get("/ping", tags=["health"])
async def ping() -> dict[str, str]:
    """Liveness: answers without touching anything else."""
    return {"ping": "pong"}


@app.get("/health", tags=["health"], responses={503: {"description": "Redis or DB down"}})
async def health(redis: RedisDep, ledger: LedgerDep, settings: SettingsDep) -> JSONResponse:
    """Readiness: can we reach Redis and the database? Also: how many workers are alive."""
    try:
        await redis.ping()
    except (OSError, errors.RedisConnectionError, errors.RedisTimeoutError) as exc:
        down = {"redis": repr(exc)}
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    try:
        await ledger.ping()
    except errors.DatabaseUnavailable as exc:
        down = {"database": repr(exc)}
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    # Workers are reported, not required: the API is ready without them, and failing its
    # readiness would not bring one back (it would only stop the API's own traffic).
    workers = await live_workers(redis, settings.queue_name)
    return JSONResponse({"status": "ok", **workers_seen(workers)})


@app.get("/queue", tags=["health"], responses=errors.REDIS_DOWN)
async def queue(redis: RedisDep, settings: SettingsDep) -> QueueView:
    """The queue's true state: ready (due, not running), scheduled (due later), running, the
    oldest ready job's age, and the workers alive. (ARQ's ZCARD counts the first three as one.)"""
    return await read_queue(redis, settings.queue_name)


# --8<-- [start:submit]
def submit_route(name: str, model: type[Args]) -> Callable[..., Awaitable[Enqueued]]:
    async def submit(
        body: model,  # type: ignore[valid-type]
        redis: RedisDep,
        ledger: LedgerDep,
        response: Response,
        schedule: ScheduleDep,
        client: ClientDep,
        key: idempotency.Key = None,
    ) -> Enqueued:
        args: Args = body  # this task's own model, which FastAPI has validated
        job_id = uuid.uuid4().hex
        kwargs = args.model_dump()
        fingerprint = idempotency.request_fingerprint(name, kwargs, schedule.as_asked)
        async with idempotency.claimed(redis, key, job_id, fingerprint) as earlier:
            if earlier is None:  # no Idempotency-Key, or the first request with it
                # Checked for a new job only: a replay's job was checked when it was made.
                await args.check_before_enqueue(client)  # e.g. fetch's SSRF guard; most: none
                with observed.enqueuing(job_id, name):  # the PRODUCER span, if tracing is on
                    await create_job(redis, ledger, name, job_id, kwargs, schedule.defer_until)
        if earlier is not None:  # the same request came before: its job, not a second one
            response.headers["Idempotent-Replayed"] = "true"
            job_id = earlier
        response.headers["Location"] = f"/jobs/{job_id}"
        detail = RUNS_NOW if schedule.past and earlier is None else None
        return Enqueued(job_id=job_id, status_url=f"/jobs/{job_id}", detail=detail)

    return submit


# --8<-- [end:submit]


# One route per task, made in a loop rather than written out: each route gets its task's own
# body model, so FastAPI validates the arguments and /docs shows them, and a task added to
# TASKS gets its route. By hand it would be the same ten lines once per task.
for name, (model, function) in TASKS.items():
    app.post(
        f"/tasks/{name}",
        status_code=202,
        summary=f"Enqueue {name}",
        description=(function.__doc__ or "").strip(),
        tags=["tasks"],
        responses={**BODY_ERRORS, **errors.REDIS_DOWN, **idempotency.RESPONSES},
        response_model_exclude_none=True,  # no "detail": null when there is nothing to say
    )(submit_route(name, model))


@app.get(
    "/jobs/{job_id}",
    tags=["jobs"],
    responses={404: {"description": "Unknown job"}, **errors.NOT_JSON, **errors.REDIS_DOWN},
)
async def get_job(
    job_id: Annotated[str, Path(max_length=64, pattern=r"^[!-~]+$")],
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
) -> jobs.JobView:
    """A job's status, progress and attempts, and its result or error once it has ended."""
    return await job_or_404(job_id, redis, ledger, settings)


async def job_or_404(
    job_id: str, redis: ArqRedis, ledger: Ledger, settings: Settings
) -> jobs.JobView:
    """The job as GET /jobs/{id} answers it (its event stream reads it the same way)."""
    view = await read_job(redis, ledger, job_id, settings.queue_name)
    if view is None:
        raise HTTPException(404, f"No job {job_id!r}")
    return view


@app.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    tags=["jobs"],
    responses={404: {"description": "Unknown job"}, **STREAM_LIMITS},
)
async def job_events(
    place: StreamPlaceDep,  # first: a 429 costs no read of the job
    job: Annotated[jobs.JobView, Depends(get_job)],  # a 404 before the stream starts
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    streams: StreamsDep,
) -> AsyncIterator[jobs.JobView]:
    """Server-Sent Events: the job's state each time it changes, until it has finished."""
    # Polling the ledger is simple and works across processes; a real application with
    # many watchers might publish changes instead (Redis pub/sub, PostgreSQL NOTIFY).
    # jobkit.streams polls each job once, however many watch it, and caps the streams.
    read = partial(job_or_404, redis=redis, ledger=ledger, settings=settings)
    async for latest in streams.follow(job.job_id, job, read, ended=jobs.has_ended):
        yield latest


# The page's actions, cancel and retry, refuse what another site's page could make a
# browser send (jobkit.dashboard.same_site_only): there is no login to stop it.
guard = [Depends(same_site_only)]
# DELETE /jobs/{id}, cancelling a job (cancel.py); POST /jobs/{id}/retry (retry.py)
app.include_router(cancel.router, dependencies=guard, responses=SAME_SITE_ONLY)
app.include_router(retry.router, dependencies=guard, responses=SAME_SITE_ONLY)
app.include_router(observed.router(get_redis))  # GET /metrics, when metrics are on
app.include_router(history.router)  # GET /jobs, GET / and GET /events: history.py
app.mount("/static", static_files())  # the jobs page's script and styles (jobkit/static)
