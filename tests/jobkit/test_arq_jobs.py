"""jobkit.arq_jobs: ARQ's keys handled directly: a cancel that is one transaction against the
queue, a worker's claim and the result; ARQ's own shape of a failed result; many jobs' ends
read in one round trip. Against a real Valkey, with jobs enqueued by ARQ itself."""

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job, JobStatus, deserialize_result

from jobkit import arq_jobs

QUEUE = "arq:queue"
KEEP_S = 60


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data, default=lambda e: {"error": repr(e)}).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def with_pool(redis_url: str, test: Callable[[ArqRedis], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        redis = await create_pool(
            RedisSettings.from_dsn(redis_url),
            job_serializer=serialize,
            job_deserializer=deserialize,
        )
        try:
            return await test(redis)
        finally:
            await redis.aclose()

    return asyncio.run(main())


def tombstone(job_id: str) -> Callable[[arq_jobs.Found], bytes]:
    def result(found: arq_jobs.Found) -> bytes:
        error = asyncio.CancelledError(f"cancelled; ran {found.attempts} times")
        return arq_jobs.failed_result(
            job_id, "add", (), {"x": 1}, found.attempts, 0, error, QUEUE, serialize
        )

    return result


def test_a_queued_job_is_taken_off_the_queue_with_the_result_given(redis_url):
    async def test(redis: ArqRedis) -> None:
        await redis.enqueue_job("add", _job_id="j1", x=1)
        assert await arq_jobs.cancel(redis, "j1", QUEUE, tombstone("j1"), KEEP_S) == "removed"
        assert await redis.zcard(QUEUE) == 0
        job = Job("j1", redis, _deserializer=deserialize)
        assert await job.status() == JobStatus.complete  # ARQ's word for any ending
        info = await job.result_info()
        assert info is not None and not info.success
        assert info.result == {"error": "CancelledError('cancelled; ran 0 times')"}
        assert 0 < await redis.pttl("arq:result:j1") <= KEEP_S * 1000

    with_pool(redis_url, test)


def test_a_running_job_is_asked_to_abort_and_an_ended_one_is_left_alone(redis_url):
    async def test(redis: ArqRedis) -> None:
        await redis.enqueue_job("add", _job_id="running", x=1)
        await redis.set("arq:in-progress:running", b"1")  # as a worker's claim leaves it
        assert await arq_jobs.cancel(redis, "running", QUEUE, tombstone("running"), KEEP_S) == (
            "aborting"
        )
        assert await redis.zscore("arq:abort", "running") is not None
        assert await redis.zscore(QUEUE, "running") is not None  # the worker's to finish

        await redis.set("arq:result:done", b"whatever a worker stored")
        assert await arq_jobs.cancel(redis, "done", QUEUE, tombstone("done"), KEEP_S) == (
            "finished"
        )
        assert await redis.get("arq:result:done") == b"whatever a worker stored"

    with_pool(redis_url, test)


def test_a_job_redis_has_no_trace_of_gets_a_tombstone_a_late_enqueue_cannot_pass(redis_url):
    async def test(redis: ArqRedis) -> None:
        seen: list[arq_jobs.Found] = []

        def result(found: arq_jobs.Found) -> bytes:
            seen.append(found)
            return tombstone("late")(found)

        assert await arq_jobs.cancel(redis, "late", QUEUE, result, KEEP_S) == "removed"
        assert seen == [arq_jobs.Found(running=False, raw=None, attempts=0)]
        assert await redis.enqueue_job("add", _job_id="late", x=1) is None  # refused

    with_pool(redis_url, test)


def test_ends_reads_many_jobs_in_one_round_trip(redis_url):
    async def test(redis: ArqRedis) -> None:
        await redis.enqueue_job("add", _job_id="queued", x=1)
        await arq_jobs.cancel(redis, "queued2", QUEUE, tombstone("queued2"), KEEP_S)
        ends = await arq_jobs.ends(redis, ["queued", "queued2", "nowhere"], QUEUE)
        assert ends["queued"] == arq_jobs.End(result=None, live=True)
        assert ends["nowhere"] == arq_jobs.End(result=None, live=False)
        stored = ends["queued2"].result
        assert stored is not None
        assert deserialize_result(stored, deserializer=deserialize).job_try == 0

    with_pool(redis_url, test)
