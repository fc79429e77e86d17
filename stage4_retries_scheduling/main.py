"""Stage 4: retries, scheduling, cancel and idempotency, on top of stage 3's ledger.

What it adds: `fetch(url)` retries a flaky HTTP call with backoff and refuses private
addresses (fetch.py, urls.py); any task runs later with `run_at` or `delay_seconds`, and an
`Idempotency-Key` header replays a request instead of enqueueing it twice (scheduling.py);
`DELETE /jobs/{id}` cancels a queued, deferred or running job; `GET /jobs/{id}` shows every
attempt. The worker gives each task its own timeout and runs a cron job that settles and
prunes the ledger (worker.py).

Run it:
    make run STAGE=4
    # or by hand, with a Redis at REDIS_URL (default redis://127.0.0.1:6379/0):
    uvicorn stage4_retries_scheduling.main:app --port 8000
    arq stage4_retries_scheduling.worker.WorkerSettings

What it leaves out, on purpose: authentication (anyone who reaches the API can submit, read
and cancel any job), a retry policy for tasks other than fetch, separate queues for slow
and fast work, and metrics. A real deployment adds those (docs: "Going to production").
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse
from pydantic import BaseModel
from redis.asyncio import ConnectionPool
from redis.exceptions import WatchError

from . import cancel, docs_ui, errors, history, idempotency, jobs, scheduling
from .config import Settings, get_settings
from .history import LedgerDep
from .ledger import JobRecord, Ledger, now
from .tasks import TASKS
from .urls import UnsafeURL, check_url
from .worker import KEEP_RESULT_S

# How long DELETE waits for a running job to stop before answering 202 "requested".
CANCEL_WAIT_S = 5.0

EVENTS_POLL_S = 0.2  # how often an event stream looks for a change in the job
EVENTS_MAX_S = 600  # a stream ends after this even if the job has not


class Enqueued(BaseModel):
    job_id: str
    status_url: str


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One connection pool for the whole app, opened once and shared by every request.
    # (Opening a pool per request, as many tutorials do, costs a TCP handshake every time
    # and leaks connections under load.) We build it ourselves rather than with arq's
    # create_pool so that every command has a timeout: a Redis that is down or stuck must
    # cost a request about a second and a 503, not a hang.
    settings: Settings = app.state.settings
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
    )
    app.state.redis = ArqRedis(
        pool,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=settings.queue_name,
    )
    app.state.ledger = Ledger(settings.database_url)
    await asyncio.to_thread(app.state.ledger.create_schema)
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await pool.aclose()
        app.state.ledger.close()


# --8<-- [end:lifespan]


def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis


Redis = Annotated[ArqRedis, Depends(get_redis)]


class EnqueueUnconfirmed(errors.RedisTimeoutError):
    """The enqueue was sent but not confirmed: Redis may hold the job (a 503 all the same)."""


# --8<-- [start:submit]
async def create_job(
    redis: ArqRedis, ledger: Ledger, name: str, job_id: str, kwargs: dict, when: datetime | None
) -> None:
    """Stage 3's order: the row comes first, then the job goes to Redis, so a job Redis loses
    is still on record. (Enqueue first, and a crash in between leaves a job no one can find.)"""
    status = "deferred" if when else "queued"
    await ledger.add(JobRecord(job_id=job_id, function=name, args=kwargs, status=status,
                               enqueue_time=now()))  # fmt: skip
    try:
        job = await redis.enqueue_job(name, _job_id=job_id, _defer_until=when, **kwargs)
    except (errors.RedisConnectionError, errors.RedisTimeoutError, WatchError) as exc:
        # Redis failed before the transaction was sent (redis-py calls a connection lost
        # during WATCH a WatchError), so it stored nothing: the job has failed.
        error = f"not enqueued: Redis is unavailable ({type(exc).__name__})"
        await ledger.update(job_id, status="failed", error=error, finish_time=now())
        raise errors.RedisConnectionError(error) from exc  # errors.redis_unavailable: 503
    if job is None:
        # The connection died with the transaction in flight (ARQ reports that as None, "id
        # taken"; ours is a fresh uuid). Redis may have stored it, and then a worker runs it.
        # So the row stays open, not "failed": the worker records how it ends if it runs,
        # reconcile() marks it lost if it never arrived.
        error = "not confirmed: Redis did not answer the enqueue in time"
        await ledger.update(job_id, error=error)
        raise EnqueueUnconfirmed(error)


def accepted(response: Response, job_id: str) -> Enqueued:
    response.headers["Location"] = f"/jobs/{job_id}"
    return Enqueued(job_id=job_id, status_url=f"/jobs/{job_id}")


def add_task_route(app: FastAPI, name: str) -> None:
    model, function = TASKS[name]

    async def submit(
        args: model,  # type: ignore[valid-type]
        redis: Redis,
        ledger: LedgerDep,
        request: Request,
        response: Response,
        run_at: scheduling.RunAt = None,
        delay_seconds: scheduling.DelaySeconds = None,
        idempotency_key: idempotency.Key = None,
    ) -> Enqueued:
        settings: Settings = request.app.state.settings
        when = scheduling.defer_until(run_at, delay_seconds, settings.max_defer_s)
        if name == "fetch":
            # Resolve and check the host now: a refused URL is the client's error (422), not
            # a job that fails later. The worker checks again before each request.
            try:
                await check_url(args.url, settings.fetch_allowlist_networks)
            except UnsafeURL as exc:
                raise errors.invalid(("body", "url"), f"URL refused: {exc}") from None
        job_id, kwargs = uuid.uuid4().hex, args.model_dump()
        # Idempotency: claim the key, create the job, then confirm the key (or release it).
        # The key points at a job only once the job exists. (Pointing it at the new id at
        # once, as a single SET NX would, hands a retry an id that never runs if we fail.)
        claim = None
        if idempotency_key is not None:
            schedule = {"run_at": run_at, "delay_seconds": delay_seconds}
            print_ = idempotency.fingerprint(name, kwargs, schedule)
            claim = idempotency.Claim(idempotency_key, job_id, print_)
            if earlier := await claim.take(redis, settings.idempotency_claim_ttl_s):
                response.headers["Idempotent-Replayed"] = "true"  # the same job, not a second
                return accepted(response, earlier)
        try:
            await create_job(redis, ledger, name, job_id, kwargs, when)
        except EnqueueUnconfirmed:
            if claim is not None:  # Redis may hold the job: a retry replays it, not a second
                await claim.confirm(redis, settings.idempotency_ttl_s)
            raise
        except Exception:
            if claim is not None:
                await claim.release(redis)  # no job was made: a retry may use the key
            raise
        if claim is not None:
            await claim.confirm(redis, settings.idempotency_ttl_s)
        return accepted(response, job_id)

    # --8<-- [end:submit]

    app.add_api_route(
        f"/tasks/{name}",
        submit,
        methods=["POST"],
        status_code=202,
        summary=f"Enqueue {name}",
        description=(function.__doc__ or "").strip(),
        tags=["tasks"],
        responses={
            **errors.BODY_ERRORS,
            **errors.REDIS_DOWN,
            **idempotency.RESPONSES,
        },
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    # FastAPI's own /docs and /redoc load from a CDN; docs_ui serves them from local files.
    app = FastAPI(title=settings.app_name, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    errors.install(app, settings.max_body_bytes)
    docs_ui.install(app)

    @app.get("/ping", tags=["health"])
    async def ping() -> dict[str, str]:
        """Liveness: answers without touching anything else."""
        return {"ping": "pong"}

    # --8<-- [start:health]
    @app.get("/health", tags=["health"], responses={503: {"description": "Redis or DB down"}})
    async def health(redis: Redis, ledger: LedgerDep) -> JSONResponse:
        """Readiness: can we reach Redis and the database?"""
        try:
            await redis.ping()
        except (OSError, errors.RedisConnectionError, errors.RedisTimeoutError) as exc:
            return JSONResponse(
                status_code=503, content={"status": "unavailable", "down": {"redis": repr(exc)}}
            )
        try:
            await ledger.ping()
        except errors.DatabaseUnavailable as exc:
            return JSONResponse(
                status_code=503, content={"status": "unavailable", "down": {"database": repr(exc)}}
            )
        return JSONResponse({"status": "ok"})

    # --8<-- [end:health]

    for name in TASKS:
        add_task_route(app, name)

    # --8<-- [start:get_job]
    async def job_state(job_id: str, redis: ArqRedis, ledger: Ledger) -> jobs.JobView:
        """Stage 3's GET /jobs/{id}: the ledger's story plus Redis's live status."""
        record = await ledger.get(job_id)
        if record is not None and record.status in jobs.FINAL:
            return record  # finished: the ledger remembers after Redis has forgotten
        # Unfinished as far as the ledger knows. If Redis holds a result, record it now:
        # ARQ skips the worker's hooks for some endings (max tries, expired).
        if record is not None and await ledger.copy_result(redis, job_id, settings.queue_name):
            return await ledger.get(job_id)  # type: ignore[return-value]
        view = await jobs.read_job(redis, job_id, settings.queue_name)
        if record is None or (view is not None and view.status in jobs.FINAL):
            if view is None:
                raise HTTPException(404, f"No job {job_id!r}")
            return view  # not on record (enqueued by something else), or it just ended
        if view is not None:  # None: Redis lost it; reconcile() marks it failed in time
            record.status, record.attempts = view.status, view.attempts  # where it is now
        return record  # the story so far

    @app.get(
        "/jobs/{job_id}",
        tags=["jobs"],
        responses={
            404: {"description": "Unknown job"},
            502: {"description": "The job's data in Redis is not JSON"},
            **errors.REDIS_DOWN,
        },
    )
    async def get_job(
        job_id: Annotated[str, Path(max_length=64)], redis: Redis, ledger: LedgerDep
    ) -> jobs.JobView:
        """A job's status, progress and attempts, and its result or error once it has ended."""
        view = await job_state(job_id, redis, ledger)
        return jobs.with_attempt_log(view, await ledger.attempts(job_id))

    # --8<-- [end:get_job]

    # --8<-- [start:events]
    @app.get("/jobs/{job_id}/events", response_class=EventSourceResponse, tags=["jobs"],
             responses={404: {"description": "Unknown job"}})  # fmt: skip
    async def job_events(
        job: Annotated[jobs.JobView, Depends(get_job)], redis: Redis, ledger: LedgerDep
    ) -> AsyncIterator[jobs.JobView]:
        """Server-Sent Events: the job's state each time it changes, until it has finished."""
        # Polling the ledger is simple and works across processes; a real application with
        # many watchers might publish changes instead (Redis pub/sub, PostgreSQL NOTIFY).
        deadline = time.monotonic() + EVENTS_MAX_S
        yield job
        while job.status not in jobs.FINAL and time.monotonic() < deadline:
            await asyncio.sleep(EVENTS_POLL_S)
            latest = await get_job(job.job_id, redis, ledger)
            if latest != job:
                job = latest
                yield job

    # --8<-- [end:events]

    # --8<-- [start:delete]
    @app.delete(
        "/jobs/{job_id}",
        tags=["jobs"],
        responses={
            202: {"description": "Still running: cancellation requested"},
            404: {"description": "Unknown job"},
            409: {"description": "The job has already finished"},
        },
    )
    async def cancel_job(
        job_id: Annotated[str, Path(max_length=64)], redis: Redis, ledger: LedgerDep
    ) -> jobs.JobView:
        """Cancel a queued, deferred or running job."""
        view = await job_state(job_id, redis, ledger)  # 404 for an unknown job
        if view.status not in jobs.FINAL:
            how = await cancel.cancel_and_wait(
                redis, job_id, settings.queue_name, KEEP_RESULT_S, CANCEL_WAIT_S
            )
            # Redis now has its result (unless it is still stopping); job_state copies that
            # into the ledger, so the two agree however the race went.
            view = await job_state(job_id, redis, ledger)
            if how == "finished" and view.status not in jobs.FINAL:
                # On record, but Redis has no trace of it (flushed, or restarted without its
                # data): nothing will run it, so the ledger records the cancel itself.
                await ledger.update(job_id, status="cancelled", finish_time=now(),
                                    error=cancel.LOST_IN_REDIS)  # fmt: skip
                view = await job_state(job_id, redis, ledger)
        if view.status == "cancelled":
            return jobs.with_attempt_log(view, await ledger.attempts(job_id))
        if view.status in jobs.FINAL:
            raise HTTPException(409, f"Job {job_id} has already finished: {view.status}")
        return JSONResponse(status_code=202, content=view.model_dump(mode="json"))  # type: ignore[return-value]

    # --8<-- [end:delete]

    app.include_router(history.router)
    return app


app = create_app()
