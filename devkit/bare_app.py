"""The yardstick for `make bench`: a bare FastAPI + ARQ app. Not a lesson; do not copy it.

The least a FastAPI developer would write for the same HTTP shapes as the stages: a body
model, one ArqRedis pool from arq's `create_pool` opened in the lifespan, a JSON job
serializer, no middleware, no exception handlers, no response models, no ledger, no limits
on the input. The bench runs it beside the stages, the same way, and prints every stage's
figures as a ratio of this app's: absolute figures on a shared 2-core machine drift from
day to day, ratios within one run do not.

    uvicorn devkit.bare_app:app      # REDIS_URL (default redis://127.0.0.1:6379/0)
    arq devkit.bare_app.WorkerSettings
"""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job, JobStatus
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

REDIS = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
POLL_DELAY_S = 0.05  # the stages' worker setting, so the latency phase compares code


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = await create_pool(
        REDIS, job_serializer=serialize, job_deserializer=json.loads
    )
    yield
    await app.state.redis.aclose()


app = FastAPI(lifespan=lifespan)


class AddArgs(BaseModel):
    x: int
    y: int


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"ping": "pong"}


@app.post("/tasks/add", status_code=202)
async def add_task(args: AddArgs, request: Request, response: Response):
    job = await request.app.state.redis.enqueue_job("add", x=args.x, y=args.y)
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return {"job_id": job.job_id, "status_url": f"/jobs/{job.job_id}"}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request):
    job = Job(job_id, request.app.state.redis, _deserializer=json.loads)
    status = await job.status()
    info = await job.info()  # the result once finished (with start and finish times)
    if status == JobStatus.not_found or info is None:
        raise HTTPException(404, "no such job")
    return {**asdict(info), "job_id": job_id, "status": status.value}


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


class WorkerSettings:
    functions = [add]
    redis_settings = REDIS
    job_serializer = serialize
    job_deserializer = json.loads
    poll_delay = POLL_DELAY_S
