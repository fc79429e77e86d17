"""Stage 2: a real job queue with ARQ and Redis.

What it adds: `POST /tasks/<name>` puts a job in Redis and answers 202 with a job id at
once; a separate worker process runs it; `GET /jobs/{id}` reports its status and result.

Run it:
    make run STAGE=2
    # or by hand, with a Redis at REDIS_URL (default redis://127.0.0.1:6379/0):
    uvicorn stage2_arq_basic.main:app --port 8000
    arq stage2_arq_basic.worker.WorkerSettings

What it leaves out, on purpose: Redis keeps a job's result for an hour (KEEP_RESULT_S in
worker.py) and then forgets the job ever existed; there is no history, no progress and no
list of jobs. Stage 3 keeps every job in a database.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.asyncio import ConnectionPool

from . import docs_ui, errors, jobs
from .config import Settings, get_settings
from .tasks import TASKS


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
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await pool.aclose()


# --8<-- [end:lifespan]


def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis


Redis = Annotated[ArqRedis, Depends(get_redis)]


def add_task_route(app: FastAPI, name: str) -> None:
    model, function = TASKS[name]

    # --8<-- [start:submit]
    async def submit(args: model, redis: Redis, response: Response) -> Enqueued:  # type: ignore[valid-type]
        # The job goes to Redis by name with JSON arguments; the worker picks it up.
        # This request only waits for Redis to store it: a millisecond, whatever the job costs.
        job = await redis.enqueue_job(name, **args.model_dump())
        if job is None:
            # ARQ's "this job id exists" (it picked a fresh uuid), or the connection died with
            # the transaction in flight. Redis may have stored the job: we can't say, so 503.
            raise errors.RedisTimeoutError("Redis did not confirm the enqueue in time")
        response.headers["Location"] = f"/jobs/{job.job_id}"
        return Enqueued(job_id=job.job_id, status_url=f"/jobs/{job.job_id}")

    # --8<-- [end:submit]

    app.add_api_route(
        f"/tasks/{name}",
        submit,
        methods=["POST"],
        status_code=202,
        summary=f"Enqueue {name}",
        description=(function.__doc__ or "").strip(),
        tags=["tasks"],
        responses={**errors.BODY_ERRORS, **errors.REDIS_DOWN},
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
    @app.get("/health", tags=["health"], responses={503: {"description": "Redis is down"}})
    async def health(redis: Redis) -> JSONResponse:
        """Readiness: can we reach Redis?"""
        try:
            await redis.ping()
        except (OSError, errors.RedisConnectionError, errors.RedisTimeoutError) as exc:
            return JSONResponse(
                status_code=503, content={"status": "unavailable", "down": {"redis": repr(exc)}}
            )
        return JSONResponse({"status": "ok"})

    # --8<-- [end:health]

    for name in TASKS:
        add_task_route(app, name)

    # --8<-- [start:get_job]
    @app.get(
        "/jobs/{job_id}",
        tags=["jobs"],
        responses={
            404: {"description": "Unknown job"},
            502: {"description": "The job's data in Redis is not JSON"},
            **errors.REDIS_DOWN,
        },
    )
    async def get_job(job_id: Annotated[str, Path(max_length=64)], redis: Redis) -> jobs.JobView:
        """A job's status, and its result or error once it has finished."""
        view = await jobs.read_job(redis, job_id, settings.queue_name)
        if view is None:
            raise HTTPException(404, f"No job {job_id!r}: unknown, or its result has expired")
        return view

    # --8<-- [end:get_job]

    return app


app = create_app()
