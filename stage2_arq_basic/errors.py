"""Redis down: a JSON 503, never a 500 or a hang (bad input is jobkit.http's: 413, 422)."""

from arq.jobs import DeserializationError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from jobkit.redis_pool import RedisBusy


async def redis_busy(_: Request, exc: Exception) -> JSONResponse:
    # Not Redis's fault, and not the client's: too many requests at once for this process.
    detail = f"The server is busy: {exc}"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


async def redis_unavailable(_: Request, exc: Exception) -> JSONResponse:
    # The pool reconnects by itself on the next request once Redis is back.
    detail = f"Redis is unavailable: {type(exc).__name__}"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


async def undecodable_job(_: Request, exc: DeserializationError) -> JSONResponse:
    # What Redis holds for this job is not JSON, so this app did not write it (a pickle
    # planted in Redis, say). We refuse to decode it; the worker fails such a job the same way.
    detail = f"The job's data in Redis is not JSON: {exc}"
    return JSONResponse({"detail": detail}, status_code=502)


REDIS_DOWN: dict[int | str, dict] = {503: {"description": "Redis is unavailable, or too busy"}}
NOT_JSON: dict[int | str, dict] = {502: {"description": "The job's data in Redis is not JSON"}}


def install(app: FastAPI) -> None:
    app.exception_handler(RedisBusy)(redis_busy)  # before its base class's, below
    app.exception_handler(RedisConnectionError)(redis_unavailable)
    app.exception_handler(RedisTimeoutError)(redis_unavailable)
    # redis-py raises WatchError when the connection drops while a key is WATCHed.
    app.exception_handler(WatchError)(redis_unavailable)
    app.exception_handler(DeserializationError)(undecodable_job)
