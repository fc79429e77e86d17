"""Bad input answered as JSON, never a 500: armour any FastAPI app needs, that no chapter teaches.

- `refuse_bad_input(app, max_body_bytes)`: a JSON 413 for a body over the limit, counted as it
  arrives (a Content-Length can lie, or be absent), and a 422 handler that never echoes the input
  back. FastAPI's own 422 does, and for a body such as `{"x": NaN}` the echo is a float that JSON
  cannot encode: the error page itself crashes with a 500.
- `BODY_ERRORS`: what a route with a body may answer besides its own codes, for OpenAPI.
- `invalid(where, message)`: a 422 in FastAPI's own shape, for checks a model cannot make.

A learner may skip this module: every stage calls `refuse_bad_input` once, in main.py.
"""

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# What a route with a body can answer besides its own codes, for its OpenAPI `responses`.
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body cannot be decoded: not UTF-8, or a number too long to read"},
    413: {"description": "The body is over the size limit"},
}


def refuse_bad_input(app: FastAPI, max_body_bytes: int) -> None:
    """Answer an oversized body with a JSON 413 and an invalid one with a 422 that never
    echoes the input."""
    app.exception_handler(RequestValidationError)(validation_error)
    app.add_middleware(LimitBodySize, max_bytes=max_body_bytes)


def invalid(where: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 in the same shape as FastAPI's own, for checks a Pydantic model can't make."""
    return RequestValidationError([{"loc": where, "msg": message, "type": "value_error"}])


async def validation_error(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, without the `input` it echoes (which may not be JSON at all)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body is over the {max_bytes}-byte limit")


class LimitBodySize:
    """ASGI middleware: refuse request bodies over `max_bytes` with a JSON 413.

    A declared Content-Length is refused before anything is read; a streamed body is counted as
    it arrives. (Uvicorn and Starlette set no limit; FastAPI's own answers in plain text.)
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_bytes:
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
                raise BodyTooLarge(self.max_bytes)  # FastAPI's handler makes it a JSON 413
            return message

        await self.app(scope, counting_receive, send)
