"""Every error is a JSON body: 4xx for bad input, 503 while Redis is down, never a 500."""

from arq.jobs import DeserializationError
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's default handler echoes the offending input back. For a body such as
    # {"x": NaN} that input is a float JSON cannot encode, and the error page itself
    # crashes with a 500. We return where and why, without the input.
    errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


class RedisBusy(RedisConnectionError):
    """Redis answers, but every connection of our pool stayed in use (redis_connection.py)."""


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


# What a route with a body can answer besides 202 and 422, for its OpenAPI entry.
BODY_ERRORS: dict[int | str, dict] = {
    400: {"description": "The body cannot be decoded: not UTF-8, or a number too long to read"},
    413: {"description": "The body is over the size limit"},
}
REDIS_DOWN: dict[int | str, dict] = {503: {"description": "Redis is unavailable, or too busy"}}
NOT_JSON: dict[int | str, dict] = {502: {"description": "The job's data in Redis is not JSON"}}


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body is over the {max_bytes}-byte limit")


class LimitBodySize:
    """Refuse request bodies over `max_bytes` with a JSON 413.

    A declared Content-Length is refused before anything is read; a streamed body is
    counted as it arrives. (FastAPI's own `max_body_size` answers in plain text.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            error = BodyTooLarge(self.max_bytes)
            response = JSONResponse({"detail": error.detail}, status_code=error.status_code)
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)  # FastAPI turns it into a JSON 413
            return message

        await self.app(scope, counting_receive, send)


def install(app: FastAPI, max_body_bytes: int) -> None:
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(RedisBusy)(redis_busy)  # before its base class's, below
    app.exception_handler(RedisConnectionError)(redis_unavailable)
    app.exception_handler(RedisTimeoutError)(redis_unavailable)
    # redis-py raises WatchError when the connection drops while a key is WATCHed.
    app.exception_handler(WatchError)(redis_unavailable)
    app.exception_handler(DeserializationError)(undecodable_job)
    app.add_middleware(LimitBodySize, max_bytes=max_body_bytes)
