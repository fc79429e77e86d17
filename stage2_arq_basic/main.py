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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import FastAPI, HTTPException, Path, Response
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from jobkit.http import BODY_ERRORS, refuse_bad_input
from jobkit.redis_pool import open_pool

from . import errors, jobs
from .config import get_settings
from .deps import RedisDep, SettingsDep
from .tasks import TASKS, Args


class Enqueued(BaseModel):
    job_id: str
    status_url: str


# --8<-- [start:lifespan]
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


logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
# FastAPIOffline is FastAPI whose /docs and /redoc load their files from this machine, not a CDN.
app = FastAPIOffline(
    title=get_settings().app_name,
    description=get_settings().app_description,
    lifespan=lifespan,
)
# Armour every app needs and this chapter doesn't teach (jobkit/http.py): a JSON 413 for an
# oversized body, and a 422 that never echoes the bad input back.
refuse_bad_input(app, get_settings().max_body_bytes)
errors.install(app)  # Redis down: a 503 (errors.py)


@app.get("/ping", tags=["health"])
async def ping() -> dict[str, str]:
    """Liveness: answers without touching anything else."""
    return {"ping": "pong"}


# --8<-- [start:health]
@app.get("/health", tags=["health"], responses={503: {"description": "Redis is down"}})
async def health(redis: RedisDep) -> JSONResponse:
    """Readiness: can we reach Redis?"""
    try:
        await redis.ping()
    except (OSError, errors.RedisConnectionError, errors.RedisTimeoutError) as exc:
        down = {"redis": repr(exc)}
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    return JSONResponse({"status": "ok"})


# --8<-- [end:health]


# --8<-- [start:submit]
def submit_route(name: str, model: type[Args]) -> Callable[..., Awaitable[Enqueued]]:
    # FastAPI validates the body against this task's own `model`; mypy cannot check a variable.
    async def submit(args: model, redis: RedisDep, response: Response) -> Enqueued:  # type: ignore[valid-type]
        # The job goes to Redis by name with JSON arguments; the worker picks it up.
        # This request only waits for Redis to store it: a millisecond, whatever the job costs.
        job = await redis.enqueue_job(name, **dict(args))
        if job is None:
            # ARQ's "this job id exists" (it picked a fresh uuid), or the connection died with
            # the transaction in flight. Redis may have stored the job: we can't say, so 503.
            raise errors.RedisTimeoutError("Redis did not confirm the enqueue in time")
        response.headers["Location"] = f"/jobs/{job.job_id}"
        return Enqueued(job_id=job.job_id, status_url=f"/jobs/{job.job_id}")

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
        responses={**BODY_ERRORS, **errors.REDIS_DOWN},
    )(submit_route(name, model))


# --8<-- [start:get_job]
@app.get(
    "/jobs/{job_id}",
    tags=["jobs"],
    responses={404: {"description": "Unknown job"}, **errors.NOT_JSON, **errors.REDIS_DOWN},
)
async def get_job(
    # An id is visible ASCII: one with a NUL or a control character is a 422 (PostgreSQL
    # would refuse it with an error), as are the ids of every route of the later stages.
    job_id: Annotated[str, Path(max_length=64, pattern=r"^[!-~]+$")],
    redis: RedisDep,
    settings: SettingsDep,
) -> jobs.JobView:
    """A job's status, and its result or error once it has finished."""
    view = await jobs.read_from_redis(redis, job_id, settings.queue_name)
    if view is None:
        raise HTTPException(404, f"No job {job_id!r}: unknown, or its result has expired")
    return view


# --8<-- [end:get_job]
