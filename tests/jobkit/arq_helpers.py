"""Real ARQ workers and pools for jobkit's tests, built inside the running event loop (a
Worker built outside it attaches its tasks to another loop: ARQ_NOTES A11)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker

T = TypeVar("T")


def worker(url: str, functions: list[Any], **settings: Any) -> Worker:
    """An in-process burst worker: it stops once the queue is empty and its jobs are done."""
    options: dict[str, Any] = {
        "redis_settings": RedisSettings.from_dsn(url),
        "burst": True,
        "poll_delay": 0,
        "handle_signals": False,
    }
    return Worker(functions=functions, **(options | settings))


async def drain(url: str, functions: list[Any], **settings: Any) -> Worker:
    """Run every queued job to its end in a burst worker; returns the closed worker."""
    burst = worker(url, functions, **settings)
    try:
        await burst.async_run()
    finally:
        await burst.close()
    return burst


@asynccontextmanager
async def pool(url: str) -> AsyncIterator[ArqRedis]:
    redis = await create_pool(RedisSettings.from_dsn(url))
    try:
        yield redis
    finally:
        await redis.aclose()


async def until(check: Callable[[], Awaitable[T]], deadline_s: float, what: str) -> T:
    """Await `check()` until it returns something truthy; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
    return result
