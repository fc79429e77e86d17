"""Stage 4: the ledger maintenance cron job, run directly instead of waiting for the clock."""

import asyncio
import dataclasses
import json
import logging
import re
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from arq.connections import RedisSettings, create_pool
from arq.worker import Worker, get_kwargs

from tests.helpers import enqueue, enqueue_behind_the_apis_back
from tests.pagerun import Bindings
from tests.pages import blocks

pytestmark = pytest.mark.since_stage(4)


async def run_maintenance(stage, redis_url):
    """What the cron tick does, with the ctx the worker's on_startup builds."""
    worker = stage.module("worker")
    ctx = {"redis": await create_pool(RedisSettings.from_dsn(redis_url))}
    await worker.startup(ctx)
    try:
        return await stage.module("maintenance").maintain_ledger(ctx)
    finally:
        await worker.shutdown(ctx)
        await ctx["redis"].aclose()


def age_row(stage, job_id, **shift):
    """Move a row's times into the past, as if the clock had run on."""
    ledger = stage.module("ledger")
    engine = ledger.Ledger(stage.module("config").get_settings().database_url).db.engine
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
    (job,) = stage.module("worker").WorkerSettings.cron_jobs
    assert job.coroutine is stage.module("maintenance").maintain_ledger
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
    assert fresh["settled"] == 0  # not yet past its timeout
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
    retention = stage.module("maintenance").HISTORY_RETENTION_S
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


def ledger_engine(stage) -> sa.Engine:
    return sa.create_engine(stage.module("config").get_settings().database_url)


def insert_rows(stage, table: sa.Table, rows: list[dict]) -> None:
    engine = ledger_engine(stage)
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)
    engine.dispose()


def attempt_job_ids(stage) -> list[str]:
    engine, attempts = ledger_engine(stage), stage.module("ledger").ATTEMPTS
    with engine.connect() as connection:
        ids = connection.execute(sa.select(attempts.c.job_id)).scalars().all()
    engine.dispose()
    return sorted(ids)


def unfinished_rows(stage, count: int, age_s: float) -> list[dict]:
    """`count` queued jobs, enqueued `age_s` ago, that Redis has never heard of."""
    enqueued = ledger_now(stage) - timedelta(seconds=age_s)
    return [
        {"job_id": uuid.uuid4().hex, "function": "add", "args": {"x": 1, "y": 1},
         "status": "queued", "result": None, "enqueue_time": enqueued + timedelta(microseconds=n),
         "updated_at": enqueued}
        for n in range(count)
    ]  # fmt: skip


def test_a_cron_run_or_a_job_not_on_record_leaves_no_attempt_row(stage, client, drain, redis_url):
    # ARQ runs the job hooks for every job; a job with no ledger row must not get an attempt.
    on_record = enqueue(client, "add", {"x": 1, "y": 1})
    # What ARQ's cron enqueues every tick, and a job from other code:
    enqueue_behind_the_apis_back(stage, redis_url, "cron:maintain_ledger", "cron:maintain_ledger:1")
    enqueue_behind_the_apis_back(stage, redis_url, "add", "not-on-record", x=1, y=2)
    drain()
    assert attempt_job_ids(stage) == [on_record]


def test_maintenance_prunes_attempts_whose_job_has_no_row(stage, client, drain, redis_url):
    on_record = enqueue(client, "add", {"x": 1, "y": 1})
    drain()
    orphans = [{"job_id": f"cron:maintain_ledger:{n}", "attempt": 1, "outcome": "complete",
                "updated_at": ledger_now(stage)} for n in range(3)]  # fmt: skip
    insert_rows(stage, stage.module("ledger").ATTEMPTS, orphans)  # as earlier versions left

    report = asyncio.run(run_maintenance(stage, redis_url))

    assert report["orphaned_attempts_pruned"] == 3
    assert attempt_job_ids(stage) == [on_record]


MANY_ROWS = 50_000  # checked one by one (~1 to 2.4 ms a row), they outlast the 30 s timeout


def test_a_run_over_many_unfinished_rows_still_prunes_within_its_timeout(
    stage, client, drain, redis_url
):
    old = enqueue(client, "add", {"x": 1, "y": 1})
    drain()
    retention = stage.module("maintenance").HISTORY_RETENTION_S
    age_row(stage, old, finish_time=retention + 60, enqueue_time=retention + 60)
    insert_rows(stage, stage.module("ledger").JOBS, unfinished_rows(stage, MANY_ROWS, age_s=60))
    (cron_job,) = stage.module("worker").WorkerSettings.cron_jobs

    async def run_as_cron():  # cut short at the cron job's own timeout, as ARQ would
        return await asyncio.wait_for(run_maintenance(stage, redis_url), cron_job.timeout_s)

    report = asyncio.run(run_as_cron())

    assert report["pruned"] == 1
    assert client.get("/jobs", params={"status": "complete"}).json()["jobs"] == []


def test_each_run_checks_its_budget_of_rows_and_the_next_carries_on(
    stage, client, redis_url, monkeypatch
):
    reconcile = stage.module("maintenance")
    monkeypatch.setattr(stage.module("maintenance"), "MAINTENANCE_ROW_BUDGET", 3)
    monkeypatch.setattr(reconcile, "RECONCILE_BATCH", 2)
    client.get("/health")  # the app has created the schema
    lost = unfinished_rows(stage, 7, age_s=reconcile.LOST_AFTER_S + 60)  # Redis lost them all
    insert_rows(stage, stage.module("ledger").JOBS, lost)

    settled = [asyncio.run(run_maintenance(stage, redis_url))["settled"] for _ in range(4)]

    assert settled == [3, 3, 1, 0]
    failed = client.get("/jobs", params={"status": "failed"}).json()["jobs"]
    assert sorted(job["job_id"] for job in failed) == sorted(row["job_id"] for row in lost)


def test_the_cron_job_cannot_be_read_or_cancelled_through_the_job_routes(
    stage, client, drain, redis_url, raw_redis
):
    # ARQ's cron job id is predictable (the tick's time in ms): DELETE /jobs/<it> switched
    # the ledger's maintenance off, run after run, for anyone.
    cron_id = "cron:maintain_ledger:1795407000000"  # what ARQ enqueues at that tick
    enqueue_behind_the_apis_back(stage, redis_url, "cron:maintain_ledger", cron_id)
    assert client.get(f"/jobs/{cron_id}").status_code == 404
    assert client.get(f"/jobs/{cron_id}/events").status_code == 404
    assert client.delete(f"/jobs/{cron_id}").status_code == 404
    worker = drain()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)  # it ran, not cancelled
    report = json.loads(raw_redis.get(f"arq:result:{cron_id}"))
    assert report["s"] and "settled" in report["r"]


def test_the_cron_jobs_log_lines_are_the_ones_the_page_shows(
    stage, redis_url, settings_env, caplog
):
    # The page's output of a tick cannot be run as a page step (a tick is up to five minutes
    # away), so here the worker runs the same cron job at once and its log is compared with
    # the page's lines, the way tests/test_pages.py compares a process's log.
    (shown,) = [
        block.source for block in blocks("docs/stages/stage4.md")
        if block.verb == "not-run" and "cron:maintain_ledger" in block.source
    ]  # fmt: skip
    settings = get_kwargs(stage.module("worker").WorkerSettings)
    (job,) = settings["cron_jobs"]
    settings |= {
        "cron_jobs": [dataclasses.replace(job, run_at_startup=True)],  # due at the first beat
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "burst": True,
        "poll_delay": 0,
        "handle_signals": False,
    }

    async def run() -> None:
        worker = Worker(**settings)  # built in the loop it runs in (ARQ_NOTES A11)
        try:
            await worker.async_run()
        finally:
            await worker.close()

    with caplog.at_level(logging.INFO, logger="arq.worker"):
        asyncio.run(run())
    # As `make run` prints it: the runner's prefix, then ARQ's own "%H:%M:%S: message".
    printed = [
        f"  worker | {time.strftime('%H:%M:%S', time.localtime(r.created))}: {r.getMessage()}"
        for r in caplog.records if r.name == "arq.worker"
    ]  # fmt: skip
    bindings = Bindings()
    for line in shown.strip().splitlines():
        pattern, _ = bindings.pattern(line.strip(), log=True)
        search = re.compile(pattern.pattern.removesuffix(r"[ \t]*\n"))
        assert any(search.search(text) for text in printed), f"{line}\nnot in:\n" + "\n".join(
            printed
        )


def test_the_cron_jobs_last_runs_are_listed_from_redis_for_the_page(
    stage, client, drain, redis_url
):
    step_ms = stage.module("maintenance").MAINTENANCE_EVERY_MIN * 60_000
    tick = int(time.time() * 1000) // step_ms * step_ms - step_ms  # the tick before this one
    cron_id = f"cron:maintain_ledger:{tick}"
    enqueue_behind_the_apis_back(stage, redis_url, "cron:maintain_ledger", cron_id)
    drain()

    runs = client.get("/cron").json()
    assert len(runs) == stage.module("maintenance").CRON_RUNS_SHOWN
    assert [run["due"] for run in runs] == sorted((run["due"] for run in runs), reverse=True)
    (ran,) = [run for run in runs if run["job_id"] == cron_id]
    assert ran["status"] == "complete"
    assert "settled" in ran["result"]
    others = {run["status"] for run in runs if run["job_id"] != cron_id}
    assert others == {"no result"}  # no worker ran those ticks
