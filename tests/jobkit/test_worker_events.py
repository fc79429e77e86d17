"""jobkit.worker_events: every pick-up of every job, with its function, try and outcome, from
real ARQ workers; including the endings ARQ's hooks never see. And ARQ behaves as before."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from arq import Retry
from arq.jobs import Job
from arq.worker import Worker, func

from jobkit import worker_events
from jobkit.worker_events import Pickup
from tests.jobkit.arq_helpers import drain, pool, until, worker

DEADLINE_S = 30.0


class Observer:
    """Keeps what its Events hear."""

    def __init__(self) -> None:
        self.picked: list[str] = []
        self.started: list[tuple[str, int]] = []
        self.ended: list[Pickup] = []

    def on(self) -> "Events":
        return Events(self)

    def outcomes(self) -> list[tuple[str, int | None, str | None]]:
        return [(p.function, p.job_try, p.outcome) for p in self.ended]


class Events:
    def __init__(self, seen: Observer) -> None:
        self.seen = seen

    def picked(self, pickup: Pickup) -> None:
        self.seen.picked.append(pickup.function)

    def started(self, pickup: Pickup) -> None:
        assert pickup.job_try is not None
        self.seen.started.append((pickup.function, pickup.job_try))

    def ended(self, pickup: Pickup) -> None:
        self.seen.ended.append(pickup)


def observed(seen: Observer, then: Any = None) -> Any:
    """An on_startup hook that attaches the observer (and runs `then`, the stage's own)."""

    async def startup(ctx: dict[str, Any]) -> None:
        worker_events.attach(ctx, [seen.on()])
        if then is not None:
            await then(ctx)

    return startup


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    return x / y


async def flaky(ctx: dict[str, Any]) -> int:
    if ctx["job_try"] == 1:
        raise Retry(defer=0)
    return ctx["job_try"]


async def always_retry(ctx: dict[str, Any]) -> None:
    raise Retry(defer=0)


async def slow(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(60)


FUNCTIONS = [
    add,
    divide,
    flaky,
    func(always_retry, max_tries=2),
    func(slow, timeout=0.2),
    func(add, name="add_no_result", keep_result=0),
]


def run(redis_url: str, enqueue: list[tuple[Any, ...]], **settings: Any) -> Observer:
    seen = Observer()

    async def main() -> None:
        async with pool(redis_url) as redis:
            for name, *args in enqueue:
                await redis.enqueue_job(name, *args)
        await drain(redis_url, FUNCTIONS, on_startup=observed(seen), **settings)

    asyncio.run(main())
    return seen


def test_each_ending_of_a_try_that_ran_gets_its_outcome(redis_url):
    seen = run(redis_url, [("add", 1, 2), ("divide", 1, 0), ("slow",), ("add_no_result", 1, 1)])
    assert sorted(seen.outcomes()) == [
        ("add", 1, "complete"),
        ("add_no_result", 1, "complete"),
        ("divide", 1, "failed"),
        ("slow", 1, "timeout"),
    ]
    assert sorted(seen.started) == [("add", 1), ("add_no_result", 1), ("divide", 1), ("slow", 1)]
    assert all(p.duration_s is not None and p.queue_wait_s is not None for p in seen.ended)


def test_a_retry_is_one_pickup_per_try_and_used_up_tries_fail_without_running(redis_url):
    seen = run(redis_url, [("flaky",), ("always_retry",)])
    assert sorted(seen.outcomes(), key=str) == sorted(
        [
            ("flaky", 1, "retried"),
            ("flaky", 2, "complete"),
            ("always_retry", 1, "retried"),
            ("always_retry", 2, "retried"),
            ("always_retry", None, "failed"),  # max tries exceeded: ARQ's hooks never see it
        ],
        key=str,
    )
    assert seen.picked.count("always_retry") == 3


def test_endings_without_a_try_unknown_function_and_expired_job_are_failures(redis_url):
    seen = Observer()

    async def main() -> None:
        async with pool(redis_url) as redis:
            await redis.enqueue_job("no_such_function")
            expiring = await redis.enqueue_job("add", 1, 1, _expires=timedelta(milliseconds=1))
            assert expiring is not None
            await until(
                lambda: _gone(redis, f"arq:job:{expiring.job_id}"), DEADLINE_S, "the job to expire"
            )
        await drain(redis_url, FUNCTIONS, on_startup=observed(seen))

    asyncio.run(main())
    assert sorted(seen.outcomes(), key=str) == sorted(
        [("no_such_function", None, "failed"), ("<unknown>", None, "failed")], key=str
    )


async def _gone(redis: Any, key: str) -> bool:
    return not await redis.exists(key)


def test_a_job_aborted_while_it_runs_or_before_it_starts_is_cancelled(redis_url):
    seen = Observer()
    started = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    async def main() -> None:
        async with pool(redis_url) as redis:
            running = await redis.enqueue_job("hold")
            later = await redis.enqueue_job("add", 1, 1, _defer_by=timedelta(hours=1))
            assert running is not None and later is not None
            busy = worker(
                redis_url,
                [func(hold, name="hold"), add],
                on_startup=observed(seen),
                allow_abort_jobs=True,
            )
            task = asyncio.create_task(busy.async_run())
            await asyncio.wait_for(started.wait(), DEADLINE_S)
            assert await running.abort(timeout=DEADLINE_S)
            assert await later.abort(timeout=DEADLINE_S)  # ARQ makes it due, then aborts it
            await asyncio.wait_for(task, DEADLINE_S)
            await busy.close()

    asyncio.run(main())
    assert sorted(seen.outcomes(), key=str) == sorted(
        [("hold", 1, "cancelled"), ("add", None, "cancelled")], key=str
    )


def test_a_try_a_shutdown_cancels_will_run_again_so_it_counts_as_retried(redis_url):
    seen = Observer()
    started = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        started.set()
        await asyncio.sleep(60)

    async def main() -> int:
        async with pool(redis_url) as redis:
            await redis.enqueue_job("hold")
            busy = worker(redis_url, [func(hold, name="hold")], on_startup=observed(seen))
            task = asyncio.create_task(busy.async_run())
            await asyncio.wait_for(started.wait(), DEADLINE_S)
            await busy.close()  # without signal handlers, close() is the shutdown
            with pytest.raises(asyncio.CancelledError):
                await task
            return await redis.zcard("arq:queue")

    assert asyncio.run(main()) == 1  # still queued, for the next worker
    assert seen.outcomes() == [("hold", 1, "retried")]


def test_results_hooks_and_counts_are_arqs_own_with_or_without_observing(redis_url):
    hook_calls: list[str] = []

    async def job_started(ctx: dict[str, Any]) -> None:
        hook_calls.append(f"start {ctx['job_try']}")

    async def job_ended(ctx: dict[str, Any]) -> None:
        hook_calls.append("end")

    async def main(observe: bool) -> tuple[list[Any], Worker]:
        async with pool(redis_url) as redis:
            await redis.flushdb()
            jobs = [await redis.enqueue_job("add", 2, 3), await redis.enqueue_job("flaky")]
            startup = observed(Observer()) if observe else None
            ran = await drain(redis_url, FUNCTIONS, on_startup=startup,
                              on_job_start=job_started, after_job_end=job_ended)  # fmt: skip
            results = [await job.result(timeout=DEADLINE_S) for job in jobs if job is not None]
            return results, ran

    plain_results, plain = asyncio.run(main(observe=False))
    plain_hooks, hook_calls[:] = list(hook_calls), []
    watched_results, watched = asyncio.run(main(observe=True))
    assert watched_results == plain_results == [5, 2]
    assert sorted(hook_calls) == sorted(plain_hooks)
    counts = (watched.jobs_complete, watched.jobs_failed, watched.jobs_retried)
    assert counts == (plain.jobs_complete, plain.jobs_failed, plain.jobs_retried) == (2, 0, 1)


def test_arqs_own_lines_about_a_job_and_the_jobs_own_know_which_pickup_and_try_they_are(
    redis_url, caplog
):
    seen_in_job: list[Pickup | None] = []

    async def logs(ctx: dict[str, Any]) -> None:
        seen_in_job.append(worker_events.current())
        logging.getLogger("job").warning("inside")

    lines: list[tuple[str, str, str | None, str | None, int | None]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            pickup = worker_events.current()
            about = (pickup.job_id, pickup.function, pickup.job_try) if pickup else (None,) * 3
            lines.append((record.name, str(record.msg), *about))

    async def main() -> str:
        async with pool(redis_url) as redis:
            job = await redis.enqueue_job("logs")
            assert job is not None
            await drain(redis_url, [func(logs, name="logs")], on_startup=observed(Observer()))
            return job.job_id

    keep = Keep(level=logging.INFO)
    logging.getLogger().addHandler(keep)
    try:
        with caplog.at_level(logging.INFO, logger="arq.worker"):
            job_id = asyncio.run(main())
    finally:
        logging.getLogger().removeHandler(keep)
    assert seen_in_job[0] is not None and seen_in_job[0].job_id == job_id
    assert ("job", "inside", job_id, "logs", 1) in lines
    # ARQ's own first and last lines about the try, logged by run_job around the job:
    arq_lines = [line[1:] for line in lines if line[0] == "arq.worker" and line[2] == job_id]
    assert [msg.split()[1] for msg, *_ in arq_lines] == ["→", "←"]
    assert {tuple(about) for _, *about in arq_lines} == {(job_id, "logs", 1)}
    assert worker_events.current() is None  # nothing leaks out of the pick-up


def test_an_observer_that_fails_does_not_fail_the_job(redis_url):
    class Broken:
        def picked(self, pickup: Pickup) -> None:
            raise RuntimeError("picked")

        def started(self, pickup: Pickup) -> None:
            raise RuntimeError("started")

        def ended(self, pickup: Pickup) -> None:
            raise RuntimeError("ended")

    async def startup(ctx: dict[str, Any]) -> None:
        worker_events.attach(ctx, [Broken()])

    async def main() -> Any:
        async with pool(redis_url) as redis:
            job = await redis.enqueue_job("add", 20, 22)
            assert job is not None
            await drain(redis_url, FUNCTIONS, on_startup=startup)
            return await job.result(timeout=DEADLINE_S)

    assert asyncio.run(main()) == 42


def test_worker_of_is_only_for_on_startup():
    with pytest.raises(RuntimeError, match="on_startup"):
        worker_events.worker_of({})


def test_the_worker_id_is_worker_id_from_the_environment_or_host_and_pid(monkeypatch):
    monkeypatch.setenv("WORKER_ID", "box-7")
    assert worker_events.worker_id() == "box-7"
    monkeypatch.delenv("WORKER_ID")
    assert worker_events.worker_id().endswith(":" + str(__import__("os").getpid()))


def test_a_job_function_called_outside_arq_just_runs():
    seen = Observer()
    wrapped = worker_events._watch_function(add, [seen.on()])
    assert asyncio.run(wrapped({}, 1, 2)) == 3
    assert seen.started == []


def test_queue_wait_runs_from_when_the_job_was_due(redis_url):
    overdue = datetime.now(UTC) - timedelta(seconds=30)

    async def main() -> Observer:
        seen = Observer()
        async with pool(redis_url) as redis:
            await redis.enqueue_job("add", 1, 1, _defer_until=overdue)
        await drain(redis_url, FUNCTIONS, on_startup=observed(seen))
        return seen

    (pickup,) = asyncio.run(main()).ended
    assert pickup.queue_wait_s is not None and pickup.queue_wait_s >= 30


def test_a_job_read_by_hand_ignores_what_the_worker_watches(redis_url):
    """A Job handle built by the API still reads status and info as ARQ writes them."""

    async def main() -> tuple[Any, Any]:
        async with pool(redis_url) as redis:
            job = await redis.enqueue_job("add", 1, 2)
            assert job is not None
            await drain(redis_url, FUNCTIONS, on_startup=observed(Observer()))
            again = Job(job.job_id, redis)
            return await again.status(), (await again.result_info()).result  # type: ignore[union-attr]

    status, result = asyncio.run(main())
    assert (status.value, result) == ("complete", 3)


def test_a_worker_is_watched_once_a_second_attach_is_refused(redis_url):
    async def startup(ctx: dict[str, Any]) -> None:
        worker_events.attach(ctx, [])
        worker_events.attach(ctx, [])  # would count every job twice

    with pytest.raises(RuntimeError, match="already"):
        asyncio.run(drain(redis_url, FUNCTIONS, on_startup=startup))
