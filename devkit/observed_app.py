"""A bare FastAPI + ARQ app with jobkit.observe wired in: what the observability tests run as
real processes, and what `python -m devkit.bench_observe` measures. Not a lesson.

It is devkit/bare_app.py's shape (one pool in the lifespan, a JSON job serializer, no ledger)
plus the few lines a stage adds to see its queue: `GET /queue`, `GET /metrics`, a heartbeat
and metrics port per worker, a trace from the request to each try, JSON logs. The settings,
from the environment, all off unless set:

    OBSERVE=0               no jobkit.observe at all (the bench's yardstick for "all off")
    METRICS=1               GET /metrics on the API, and a metrics port per worker
    WORKER_METRICS_PORT=n   that port (default 0 with METRICS=1: a free one; the heartbeat says)
    TRACING=file:<path>     or otlp, console (jobkit.tracing); TRACING_SERVICE names the process
    JSON_LOGS=1             JSON log lines that name their job (jobkit.logs)
    HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_S   (jobkit.heartbeat's defaults otherwise)

    uvicorn devkit.observed_app:app      # REDIS_URL (default redis://127.0.0.1:6379/0)
    arq devkit.observed_app.WorkerSettings
"""

import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq import Retry, create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from fastapi import FastAPI, Request, Response

from jobkit import heartbeat, logs, observe
from jobkit.queue_state import QueueView, read_queue

REDIS = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
QUEUE = "arq:queue"
POLL_DELAY_S = 0.05  # the stages' worker setting
PLAIN = os.environ.get("OBSERVE") == "0"
METRICS = os.environ.get("METRICS") == "1"
TRACING = os.environ.get("TRACING", "")
JSON_LOGS = os.environ.get("JSON_LOGS") == "1"
SERVICE = os.environ.get("TRACING_SERVICE", "")
logger = logging.getLogger(__name__)


class NotThere(Exception):
    """An expected failure: what a fetch of a missing page would raise."""


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=repr).encode()


# The app's own lines, to stderr (not through the root logger: this module is the worker's
# too, and ARQ's lines would then be printed twice).
logger.addHandler(logging.StreamHandler())
logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))
logger.propagate = False
observed = observe.Api(QUEUE, metrics=METRICS, tracing=TRACING, json_logs=JSON_LOGS,
                       service_name=SERVICE or "api")  # fmt: skip


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    serializer = serialize if PLAIN else observed.serializer(serialize)
    app.state.redis = await create_pool(
        REDIS, job_serializer=serializer, job_deserializer=json.loads
    )
    yield
    await app.state.redis.aclose()
    observed.shutdown()


async def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis


if PLAIN:
    app = FastAPI(lifespan=lifespan)
else:
    app = FastAPI(lifespan=lifespan, telemetry=observed.telemetry())
    app.include_router(observed.router(get_redis))


def enqueuing(job_id: str, name: str) -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext() if PLAIN else observed.enqueuing(job_id, name)


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"ping": "pong"}


@app.post("/tasks/{name}", status_code=202)
async def submit(name: str, body: dict[str, Any], request: Request, response: Response) -> Any:
    job_id = uuid.uuid4().hex
    with enqueuing(job_id, name):
        await request.app.state.redis.enqueue_job(name, _job_id=job_id, **body)
        logger.info("enqueued %s", name)
    response.headers["Location"] = f"/jobs/{job_id}"
    return {"job_id": job_id, "status_url": f"/jobs/{job_id}"}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    job = Job(job_id, request.app.state.redis, _deserializer=json.loads)
    info = await job.result_info()
    if info is None:
        return {"job_id": job_id, "status": (await job.status()).value}
    return {
        "job_id": job_id,
        "status": "complete" if info.success else "failed",
        "result": info.result,
        "attempts": info.job_try,
        "enqueue_time": info.enqueue_time.isoformat(),
        "start_time": info.start_time.isoformat(),
        "finish_time": info.finish_time.isoformat(),
    }


@app.get("/queue")
async def queue(request: Request) -> QueueView:
    return await read_queue(request.app.state.redis, QUEUE)


@app.get("/health")
async def health(request: Request) -> dict[str, Any]:
    # The status is about this API (it answers, it reaches Redis); a missing worker is said
    # in the body: restarting the API would not bring a worker back.
    workers = await heartbeat.live_workers(request.app.state.redis, QUEUE)
    body: dict[str, Any] = {"status": "ok", "workers": len(workers.alive)}
    if not workers.alive:
        since = workers.last_seen_s
        seen = "yet" if since is None else f"for {since:.0f} s"
        body["note"] = f"no worker seen {seen}"
    return body


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def flaky(ctx: dict[str, Any], fail_tries: int = 1) -> int:
    """Asks to be retried on its first `fail_tries` tries."""
    if ctx["job_try"] <= fail_tries:
        raise Retry(defer=0.01)
    return ctx["job_try"]


async def gone(ctx: dict[str, Any]) -> None:
    raise NotThere("HTTP 404 (not retried: a 4xx won't change)")


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    return x / y


def _optional_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


async def startup(ctx: dict[str, Any]) -> None:
    logs.expect_failures(NotThere)
    await observe.start_worker(
        ctx,
        QUEUE,
        metrics_port=_optional_int("WORKER_METRICS_PORT", 0 if METRICS else None),
        tracing=TRACING,
        json_logs=JSON_LOGS,
        heartbeat_interval_s=float(os.environ.get("HEARTBEAT_INTERVAL_S", heartbeat.INTERVAL_S)),
        heartbeat_ttl_s=float(os.environ.get("HEARTBEAT_TTL_S", heartbeat.TTL_S)),
        service_name=SERVICE or "worker",
    )


class WorkerSettings:
    functions = [add, flaky, gone, divide]
    redis_settings = REDIS
    queue_name = QUEUE
    job_serializer = serialize
    job_deserializer = json.loads
    poll_delay = POLL_DELAY_S
    on_startup = None if PLAIN else startup
    on_shutdown = None if PLAIN else observe.stop_worker
