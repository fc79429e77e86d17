"""Testing a stage's jobs as if they were yours (docs/guides/testing.md shows each test).

The fixtures are in conftest.py beside this file: a Valkey of the tests' own, the stage's app
(`client`), and the stage's worker as a burst worker (`run_jobs`). Copied into your project,
change `stage4_retries_scheduling` to your copy's package.
"""

import asyncio
import itertools
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from arq.worker import func

from stage4_retries_scheduling import fetch, tables, tasks
from stage4_retries_scheduling.config import Settings, get_settings


# --8<-- [start:plain]
def test_a_task_is_an_async_function_you_can_call_with_a_ctx_of_your_own():
    # ARQ calls a task as `await task(ctx, **args)`; these need nothing from ctx.
    assert asyncio.run(tasks.add({}, x=2, y=3)) == 5
    with pytest.raises(ZeroDivisionError):
        asyncio.run(tasks.divide({}, x=1, y=0))


def test_the_backoff_doubles_up_to_its_cap(monkeypatch):
    # The jitter is random: make it pick the top of its range, and the delays are exact.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    delays = [fetch.backoff_delay(attempt, base_s=1.0, cap_s=10.0) for attempt in range(1, 7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


# --8<-- [end:plain]


# --8<-- [start:end_to_end]
def enqueue(client, task: str, body: dict[str, Any]) -> str:
    """POST /tasks/<task>: the job's id."""
    response = client.post(f"/tasks/{task}", json=body)
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def test_a_job_goes_through_the_api_and_a_worker_to_its_result(client, run_jobs):
    job_id = enqueue(client, "add", {"x": 5, "y": 10})
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"  # no worker yet

    run_jobs()  # returns once the queue is empty: no sleep, no polling

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete"
    assert job["result"] == 15


# --8<-- [end:end_to_end]


# --8<-- [start:ledger]
def rows(settings: Settings, table: sa.Table, job_id: str) -> list[dict[str, Any]]:
    """The ledger's rows for a job, read with plain SQLAlchemy: what is really stored."""
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as connection:
        query = table.select().where(table.c.job_id == job_id)
        found = [dict(row) for row in connection.execute(query).mappings()]
    engine.dispose()
    return found


def test_a_job_that_raises_fails_once_and_the_ledger_keeps_its_error(client, run_jobs, settings):
    job_id = enqueue(client, "divide", {"x": 1, "y": 0})
    run_jobs()  # the worker writes the ledger behind; it has flushed it when it stops

    [row] = rows(settings, tables.JOBS, job_id)
    assert row["status"] == "failed"
    assert row["error"] == "ZeroDivisionError: float division by zero"
    assert row["attempts"] == 1  # an exception other than Retry is not retried


# --8<-- [end:ledger]


# --8<-- [start:retry]
FAILURES = 2  # the stand-in below fails this many times, then works
# ARQ keeps a job's due time in whole milliseconds, so a try may start a millisecond before
# the microsecond it was due.
ARQ_CLOCK = timedelta(milliseconds=2)


async def flaky_add(ctx: dict[str, Any], x: int, y: int) -> int:
    """Stands in for `add`: fails as a call to a flaky service would, then adds."""
    if ctx["job_try"] <= FAILURES:
        # What stage 4's fetch does for a failure worth another try: a Retry after a
        # backoff delay, and why, for the attempt log.
        raise fetch.retry_later(ctx, f"flaky on try {ctx['job_try']}")
    return x + y


def test_a_job_that_asks_for_a_retry_runs_again_after_its_backoff(
    client, run_jobs, settings, monkeypatch
):
    monkeypatch.setenv("FETCH_BASE_DELAY_S", "0.05")  # a backoff of milliseconds, not seconds
    get_settings.cache_clear()  # read again when the worker starts
    job_id = enqueue(client, "add", {"x": 1, "y": 2})

    # The API's real job, run by our function: same name, so the hooks and ledger are real.
    run_jobs(functions=[func(flaky_add, name="add")])

    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["result"], job["attempts"]) == ("complete", 3, FAILURES + 1)
    log = sorted(rows(settings, tables.ATTEMPTS, job_id), key=lambda row: row["attempt"])
    assert [row["outcome"] for row in log] == ["retrying", "retrying", "complete"]
    for earlier, later in itertools.pairwise(log):  # never before its backoff ended
        assert later["start_time"] >= earlier["next_try_at"] - ARQ_CLOCK


# --8<-- [end:retry]


# --8<-- [start:timeout]
SHORT_TIMEOUT_S = 0.2  # far below the 10 s the job would take


def test_a_job_over_its_timeout_fails_and_is_not_retried(client, run_jobs):
    job_id = enqueue(client, "wait", {"seconds": 10})

    # The real task, registered with a timeout far below what it takes.
    run_jobs(functions=[func(tasks.wait, name="wait", timeout=SHORT_TIMEOUT_S)])

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"].startswith("TimeoutError")
    assert job["attempts"] == 1


# --8<-- [end:timeout]


# --8<-- [start:killed]
# The workers' job timeout here. ARQ runs a killed worker's job again once its "in progress"
# mark expires: the timeout + 10 s after the job started.
JOB_TIMEOUT_S = 3
RERUN_DEADLINE_S = JOB_TIMEOUT_S + 10 + 30  # the mark, then room for a slow machine


def wait_for(check: Callable[[], Any], deadline_s: float, what: str) -> Any:
    """Call `check` until it returns something true; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"no {what} within {deadline_s} s"
        time.sleep(0.05)
    return result


def start_worker(log_path) -> subprocess.Popen[bytes]:
    """`arq <the stage>.worker.WorkerSettings` as a process of its own, as in production. It
    reads REDIS_URL and DATABASE_URL from the environment the `settings` fixture set."""
    command = [sys.executable, "-m", "arq", "stage4_retries_scheduling.worker.WorkerSettings"]
    env = {**os.environ, "JOB_TIMEOUT_S": str(JOB_TIMEOUT_S)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.e2e
def test_a_job_whose_worker_is_killed_runs_again_on_the_next_worker(client, settings, tmp_path):
    job_id = enqueue(client, "wait", {"seconds": 1.5})
    status = lambda: client.get(f"/jobs/{job_id}").json()["status"]  # noqa: E731
    workers = [start_worker(tmp_path / "worker.log")]
    try:
        wait_for(lambda: status() == "in_progress", 30, "job in progress")
        workers[0].kill()  # SIGKILL: no goodbye, as a crash or the OOM killer
        workers[0].wait()
        assert status() == "in_progress"  # killed mid-job, not after it

        workers.append(start_worker(tmp_path / "worker.log"))
        wait_for(lambda: status() == "complete", RERUN_DEADLINE_S, "job re-run")
    finally:
        for process in workers:
            process.kill()
            process.wait()

    job = client.get(f"/jobs/{job_id}").json()
    assert (job["result"], job["attempts"]) == (1.5, 2)  # the second try ran it to the end


# --8<-- [end:killed]
