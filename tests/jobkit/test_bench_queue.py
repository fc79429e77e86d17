"""devkit.bench_queue at a tiny size: the queue it fills is the one it says, and it measures
every read (the timings themselves are for a person to read, not for a test)."""

import asyncio

from devkit import bench_queue
from jobkit.queue_state import QueueState, read_queue_state
from tests.jobkit.arq_helpers import pool


def test_the_queue_benchmark_fills_half_due_half_scheduled_and_reads_it(redis_url):
    bench_queue.fill(redis_url, 200, running=5)

    async def state() -> QueueState:
        async with pool(redis_url) as redis:
            return await read_queue_state(redis, bench_queue.QUEUE)

    found = asyncio.run(state())
    assert (found.ready, found.scheduled, found.running) == (95, 100, 5)
    assert found.oldest_ready_age_s is not None and found.oldest_ready_age_s > 3000
    timings = asyncio.run(bench_queue.measure(redis_url, reads=2))
    assert [len(samples) for samples in timings.values()] == [2, 2, 2]
    assert "median" in bench_queue.timings(timings["read_queue_state"])
