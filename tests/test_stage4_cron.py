"""Stage 4: the ledger maintenance cron job, run directly instead of waiting for the clock."""

import asyncio
from datetime import timedelta

import pytest
from arq.connections import RedisSettings, create_pool

pytestmark = pytest.mark.since_stage(4)


async def run_maintenance(stage, redis_url):
    """What the cron tick does, with the ctx the worker's on_startup builds."""
    worker = stage.module("worker")
    ctx = {"redis": await create_pool(RedisSettings.from_dsn(redis_url))}
    await worker.startup(ctx)
    try:
        return await worker.maintain_ledger(ctx)
    finally:
        await worker.shutdown(ctx)
        await ctx["redis"].aclose()


def age_row(stage, job_id, **shift):
    """Move a row's times into the past, as if the clock had run on."""
    ledger = stage.module("ledger")
    engine = ledger.Ledger(stage.module("config").get_settings().database_url).engine
    table = ledger.JOBS
    with engine.begin() as connection:
        row = connection.execute(table.select().where(table.c.job_id == job_id)).mappings().one()
        values = {
            column: row[column] - timedelta(seconds=seconds)
            for column, seconds in shift.items()
            if row[column] is not None
        }
        connection.execute(table.update().where(table.c.job_id == job_id).values(**values))
    engine.dispose()


def test_the_maintenance_job_is_a_unique_cron_job_with_a_result(stage):
    worker = stage.module("worker")
    (job,) = worker.WorkerSettings.cron_jobs
    assert job.coroutine is worker.maintain_ledger
    assert job.unique  # one run per tick across every worker
    assert job.keep_result_s  # cron jobs keep no result unless told to


def test_maintenance_fails_a_job_stuck_in_progress_that_no_worker_holds(
    stage, client, raw_redis, redis_url
):
    job_id = client.post("/tasks/wait", json={"seconds": 5}).json()["job_id"]
    # A worker took it (ledger: in_progress) and died; ARQ's in-progress key has expired.
    raw_redis.zrem("arq:queue", job_id)
    raw_redis.delete(f"arq:job:{job_id}")
    asyncio.run(_mark_started(stage, job_id))
    fresh = asyncio.run(run_maintenance(stage, redis_url))
    assert fresh == {"settled": 0, "pruned": 0}  # not yet past its timeout
    age_row(stage, job_id, start_time=120)  # past its timeout, not yet "lost" (300 s)

    report = asyncio.run(run_maintenance(stage, redis_url))

    assert report["settled"] == 1
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"].startswith("stuck:")


async def _mark_started(stage, job_id):
    ledger = stage.module("ledger").Ledger(stage.module("config").get_settings().database_url)
    await ledger.update(job_id, status="in_progress", attempts=1, start_time=ledger_now(stage))
    ledger.close()


def ledger_now(stage):
    return stage.module("ledger").now()


def test_maintenance_prunes_finished_jobs_past_retention_and_keeps_the_rest(
    stage, client, drain, redis_url
):
    old, recent = (
        client.post("/tasks/add", json={"x": n, "y": 1}).json()["job_id"] for n in (1, 2)
    )
    drain()
    retention = stage.module("worker").HISTORY_RETENTION_S
    age_row(stage, old, finish_time=retention + 60, enqueue_time=retention + 60)

    report = asyncio.run(run_maintenance(stage, redis_url))

    assert report["pruned"] == 1
    listed = [job["job_id"] for job in client.get("/jobs").json()["jobs"]]
    assert listed == [recent]


def test_maintenance_copies_results_the_hooks_never_saw(stage, client, drain, redis_url, raw_redis):
    # max tries exceeded: ARQ fails the job without calling the hooks, so only Redis knows.
    job_id = client.post("/tasks/add", json={"x": 1, "y": 1}).json()["job_id"]
    raw_redis.set(f"arq:retry:{job_id}", 99)
    drain()
    assert asyncio.run(run_maintenance(stage, redis_url))["settled"] == 1
    page = client.get("/jobs", params={"status": "failed"}).json()["jobs"]
    assert [job["job_id"] for job in page] == [job_id]
    assert "retries exceeded" in page[0]["error"]
