"""jobkit.heartbeat: each worker's own key, listed while it lives, with ARQ's counts; gone when
it stops. (A SIGKILLed worker process: tests/jobkit/test_observe_processes.py.)"""

import asyncio
from typing import Any

from arq import Retry
from arq.worker import func

from jobkit import heartbeat
from jobkit.heartbeat import Workers, live_workers
from tests.jobkit.arq_helpers import pool, until, worker

QUEUE = "arq:queue"
DEADLINE_S = 30.0
FAST = {"interval_s": 0.05, "ttl_s": 5.0}  # beats often, so the test need not wait long


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    return x / y


async def flaky(ctx: dict[str, Any]) -> None:
    if ctx["job_try"] == 1:
        raise Retry(defer=0)


def test_no_worker_was_ever_seen_on_a_fresh_queue(redis_url):
    async def main() -> Workers:
        async with pool(redis_url) as redis:
            return await live_workers(redis, QUEUE)

    assert asyncio.run(main()) == Workers(alive=[], last_seen_s=None)


def test_live_workers_are_listed_with_arqs_counts_and_leave_when_they_stop(redis_url, monkeypatch):
    release = asyncio.Event()
    running = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        running.set()
        await release.wait()

    def settings(worker_name: str) -> dict[str, Any]:
        async def startup(ctx: dict[str, Any]) -> None:
            monkeypatch.setenv("WORKER_ID", worker_name)
            await heartbeat.start(ctx, QUEUE, extra={"metrics_port": 9}, **FAST)

        return {"on_startup": startup, "on_shutdown": heartbeat.stop}

    functions = [add, divide, flaky, func(hold, name="hold")]

    async def main() -> tuple[Workers, Workers, Workers]:
        async with pool(redis_url) as redis:
            for job in [("add", 1, 2), ("divide", 1, 0), ("flaky",), ("hold",)]:
                await redis.enqueue_job(*job)
            first = worker(redis_url, functions, **settings("first"))
            runs = [asyncio.create_task(first.async_run())]
            await asyncio.wait_for(running.wait(), DEADLINE_S)

            async def counted() -> Workers | None:
                seen = await live_workers(redis, QUEUE)
                beat = {beat.id: beat for beat in seen.alive}.get("first")
                return seen if beat and (beat.done, beat.failed) == (2, 1) else None

            await until(counted, DEADLINE_S, "the counts in the first worker's heartbeat")
            # A second, idle worker on the same queue (it finds nothing to run: the jobs have
            # all been taken by the first one).
            second = worker(redis_url, functions, burst=False, **settings("second"))
            runs.append(asyncio.create_task(second.async_run()))
            during = await until(lambda: _both(redis), DEADLINE_S, "both workers in the list")
            release.set()
            await asyncio.wait_for(runs[0], DEADLINE_S)
            await first.close()
            one_left = await live_workers(redis, QUEUE)
            await second.close()
            await asyncio.gather(runs[1], return_exceptions=True)
            return during, one_left, await live_workers(redis, QUEUE)

    during, one_left, none_left = asyncio.run(main())
    assert [beat.id for beat in during.alive] == ["first", "second"]
    first = during.alive[0]
    assert (first.running, first.done, first.failed, first.retried) == (1, 2, 1, 1)
    assert first.extra == {"metrics_port": 9}
    assert 0 <= first.last_seen_s <= FAST["ttl_s"]
    assert [beat.id for beat in one_left.alive] == ["second"]
    assert none_left.alive == []
    assert none_left.last_seen_s is not None  # "no worker seen for N s"


def test_a_worker_that_stops_beating_drops_out_when_its_key_expires(redis_url):
    """As a SIGKILLed worker does: its key is never renewed nor removed."""

    async def startup(ctx: dict[str, Any]) -> None:
        beat = await heartbeat.start(ctx, QUEUE, interval_s=3600, ttl_s=0.2)
        ctx["beat"] = beat

    async def main() -> tuple[Workers, Workers]:
        async with pool(redis_url) as redis:
            silent = worker(redis_url, [add], on_startup=startup)
            await silent.async_run()  # the queue is empty: it starts, beats once, and stops
            listed = await live_workers(redis, QUEUE)
            gone = await until(
                lambda: _none_alive(redis), DEADLINE_S, "the silent worker's key to expire"
            )
            await silent.close()  # no on_shutdown: its key was left to expire
            return listed, gone

    listed, gone = asyncio.run(main())
    assert len(listed.alive) == 1
    assert gone.alive == [] and gone.last_seen_s is not None


async def _both(redis: Any) -> Workers | None:
    seen = await live_workers(redis, QUEUE)
    return seen if len(seen.alive) == 2 else None


async def _none_alive(redis: Any) -> Workers | None:
    seen = await live_workers(redis, QUEUE)
    return seen if not seen.alive else None


def test_a_heartbeat_redis_refuses_is_logged_and_the_next_one_is_written(redis_url, caplog):
    beats: list[int] = []

    async def startup(ctx: dict[str, Any]) -> None:
        beat = await heartbeat.start(ctx, QUEUE, **FAST)
        write = beat.beat

        async def flaky_beat() -> None:
            beats.append(1)
            if len(beats) == 1:
                raise ConnectionError("Redis went away for a moment")
            await write()

        beat.beat = flaky_beat  # type: ignore[method-assign]

    async def main() -> None:
        async with pool(redis_url) as redis:
            busy = worker(redis_url, [add], burst=False, on_startup=startup,
                          on_shutdown=heartbeat.stop)  # fmt: skip
            run = asyncio.create_task(busy.async_run())
            await until(lambda: asyncio.sleep(0, len(beats) >= 3), DEADLINE_S, "more beats")
            await busy.close()
            await asyncio.gather(run, return_exceptions=True)
            assert (await live_workers(redis, QUEUE)).alive == []

    asyncio.run(main())
    assert "heartbeat of" in caplog.text and "went away" in caplog.text
