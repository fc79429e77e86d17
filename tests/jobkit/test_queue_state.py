"""jobkit.queue_state: ready, scheduled and running apart, where ZCARD counts them as one; with
real ARQ workers on the test Valkey."""

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from arq import Retry
from arq.worker import func

import jobkit.queue_state
from jobkit.queue_state import QueueState, read_queue_state
from tests.jobkit.arq_helpers import drain, pool, until, worker

QUEUE = "arq:queue"
DEADLINE_S = 30.0


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def retry_later(ctx: dict[str, Any]) -> None:
    raise Retry(defer=3600)  # waits for its backoff far longer than the test


def test_an_empty_queue_has_nothing_and_no_oldest_age(redis_url):
    async def main() -> QueueState:
        async with pool(redis_url) as redis:
            return await read_queue_state(redis, QUEUE)

    assert asyncio.run(main()) == QueueState(0, 0, 0, None)


def test_deferred_jobs_are_scheduled_and_due_ones_ready_with_the_oldest_age(redis_url):
    async def main() -> tuple[QueueState, int]:
        async with pool(redis_url) as redis:
            for n in range(3):
                await redis.enqueue_job("add", n, 1, _defer_by=timedelta(hours=1))
            overdue = datetime.now(UTC) - timedelta(seconds=30)
            await redis.enqueue_job("add", 1, 1, _defer_until=overdue)
            await redis.enqueue_job("add", 2, 2)
            return await read_queue_state(redis, QUEUE), await redis.zcard(QUEUE)

    state, zcard = asyncio.run(main())
    assert (state.ready, state.scheduled, state.running) == (2, 3, 0)
    assert state.oldest_ready_age_s is not None and state.oldest_ready_age_s >= 30
    assert zcard == 5  # what the usual "queue depth" would have said


def test_a_retry_waiting_for_its_backoff_is_scheduled_not_ready(redis_url):
    async def main() -> QueueState:
        async with pool(redis_url) as redis:
            await redis.enqueue_job("retry_later")
            # A burst worker waits for deferred jobs; one job is all this test needs run.
            await drain(redis_url, [retry_later], max_burst_jobs=1)
            return await read_queue_state(redis, QUEUE)

    assert asyncio.run(main()) == QueueState(0, scheduled=1, running=0, oldest_ready_age_s=None)


def test_jobs_running_past_their_due_time_are_running_not_ready(redis_url):
    """600 jobs run at once (more than one scan window), 100 more wait behind them."""
    running_jobs, waiting_jobs = 600, 100
    assert running_jobs > jobkit.queue_state.SCAN_WINDOW
    started: list[str] = []
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        started.append(ctx["job_id"])
        await release.wait()

    async def main() -> tuple[QueueState, QueueState]:
        async with pool(redis_url) as redis:
            for _ in range(running_jobs + waiting_jobs):
                await redis.enqueue_job("hold")
            busy = worker(redis_url, [func(hold, name="hold")], max_jobs=running_jobs)
            run = asyncio.create_task(busy.async_run())
            try:
                await until(lambda: asyncio.sleep(0, len(started) == running_jobs), DEADLINE_S,
                            "the worker to start its jobs")  # fmt: skip
                during = await read_queue_state(redis, QUEUE)
                release.set()
                await asyncio.wait_for(run, DEADLINE_S)
            finally:
                release.set()
                await busy.close()
            return during, await read_queue_state(redis, QUEUE)

    during, after = asyncio.run(main())
    assert (during.ready, during.scheduled, during.running) == (waiting_jobs, 0, running_jobs)
    assert during.oldest_ready_age_s is not None
    assert after == QueueState(0, 0, 0, None)
