"""Helpers the tests share: submit a task, read a job, poll for a condition, run a worker.

Test modules import from here (and from tests.processes for real processes), never from
each other.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job
from arq.worker import Worker, get_kwargs

T = TypeVar("T")


def enqueue(client: Any, task: str, body: dict[str, Any], **params: Any) -> str:
    """POST /tasks/<task> (query parameters from `params`); assert 202 and return the job id."""
    response = client.post(f"/tasks/{task}", json=body, params=params)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.json()["status_url"] == f"/jobs/{job_id}"
    assert response.headers["location"] == f"/jobs/{job_id}"
    return job_id


def enqueue_behind_the_apis_back(
    stage: Any, redis_url: str, function: str, job_id: str, **kwargs: Any
) -> Job | None:
    """Put a job in Redis as other code does (ARQ's cron, another program, or an enqueue
    that comes late), with no ledger row of its own: ARQ's Job, or None if ARQ refused it."""
    jobs = stage.module("jobs")

    async def enqueue_directly() -> Job | None:
        pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=jobs.serialize,
                                 job_deserializer=jobs.deserialize)  # fmt: skip
        try:
            return await pool.enqueue_job(function, _job_id=job_id, **kwargs)
        finally:
            await pool.aclose()

    return asyncio.run(enqueue_directly())


def job(client: Any, job_id: str) -> dict[str, Any]:
    """GET /jobs/<id> as a dict; asserts it answered 200."""
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def status(client: Any, job_id: str) -> str:
    return job(client, job_id)["status"]


def poll(check: Callable[[], T], deadline_s: float, what: str, every_s: float = 0.05) -> T:
    """Call `check` until it returns something truthy; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(every_s)


async def run_burst_worker(stage: Any, redis_url: str, **overrides: Any) -> Worker:
    """Run the stage's own WorkerSettings in this process until the queue is empty."""
    # The Worker must be built inside the running loop: one built outside it and run later
    # attaches its tasks to another loop.
    settings = get_kwargs(stage.module("worker").WorkerSettings)
    settings.update(
        redis_settings=RedisSettings.from_dsn(redis_url),
        burst=True,
        poll_delay=0,
        handle_signals=False,
    )
    settings.update(overrides)
    worker = Worker(**settings)
    # A burst worker runs the queue, not the clock: stage 4's cron job would otherwise be
    # enqueued whenever a test happens to cross its minute, and counted as one of the test's
    # jobs. Its function stays registered, so a test can still enqueue it by hand.
    worker.cron_jobs = []
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


class BackgroundWorker:
    """run_burst_worker in a thread of its own, while the test drives the API."""

    def __init__(self, stage: Any, redis_url: str, **overrides: Any) -> None:
        self.worker: Worker | None = None
        self.thread = threading.Thread(target=self._run, args=(stage, redis_url, overrides))
        self.thread.start()

    def _run(self, stage: Any, redis_url: str, overrides: dict[str, Any]) -> None:
        self.worker = asyncio.run(run_burst_worker(stage, redis_url, **overrides))

    def join(self, deadline_s: float) -> Worker:
        """Wait until the queue is empty and the worker has stopped; returns the worker."""
        self.thread.join(deadline_s)
        assert not self.thread.is_alive(), f"the worker did not stop within {deadline_s:.0f} s"
        assert self.worker is not None, "the worker failed (see the traceback above)"
        return self.worker


def threads_running(function: Callable[..., Any]) -> int:
    """How many threads are inside `function` right now (read from their stacks)."""
    count = 0
    for frame in sys._current_frames().values():
        while frame is not None and frame.f_code is not function.__code__:
            frame = frame.f_back
        count += frame is not None
    return count


def finished(raw_redis: Any, ids: list[str]) -> set[str]:
    """The jobs whose result is in Redis: what the worker writes last, when a job ends."""
    with raw_redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.exists(f"arq:result:{job_id}")
        return {job_id for job_id, found in zip(ids, pipe.execute(), strict=True) if found}


def run_reconcile(stage: Any) -> int:
    """One sweep of stage 4's cron job over the unfinished rows (maintenance.reconcile)."""
    settings = stage.module("config").get_settings()
    budget = stage.module("maintenance").MAINTENANCE_ROW_BUDGET

    async def run() -> int:
        ledger = stage.module("ledger").Ledger(settings.database_url)
        redis = ArqRedis.from_url(settings.redis_url)
        try:
            return await stage.module("maintenance").reconcile(ledger, redis, budget)
        finally:
            await redis.aclose()
            ledger.close()

    return asyncio.run(run())
