"""A small FastAPI app wired with jobkit.observe as a stage would wire it: for the in-process
tests (the process tests run devkit/observed_app.py, the same wiring as real processes)."""

from __future__ import annotations

import logging
import pickle
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from fastapi import FastAPI, Request

from jobkit import observe

QUEUE = "arq:queue"
log = logging.getLogger("tests.app")


def make_app(redis_url: str, **options: Any) -> FastAPI:
    """`options`: observe.Api's (metrics, tracing, json_logs)."""
    observed = observe.Api(QUEUE, **options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.redis = await create_pool(
            RedisSettings.from_dsn(redis_url), job_serializer=observed.serializer(pickle.dumps)
        )
        yield
        await app.state.redis.aclose()
        observed.shutdown()

    async def get_redis(request: Request) -> ArqRedis:
        return request.app.state.redis  # type: ignore[no-any-return]

    app = FastAPI(lifespan=lifespan, telemetry=observed.telemetry())
    app.include_router(observed.router(get_redis))

    @app.post("/tasks/{name}", status_code=202)
    async def submit(name: str, body: dict[str, Any], request: Request) -> dict[str, str]:
        job_id = uuid.uuid4().hex
        defer_s = body.pop("defer_s", None)
        with observed.enqueuing(job_id, name):
            log.info("enqueueing %s", name)
            await request.app.state.redis.enqueue_job(
                name, _job_id=job_id, _defer_by=defer_s, **body
            )
        return {"job_id": job_id}

    return app
