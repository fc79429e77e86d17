"""How many unfinished ledger rows a stage 4 maintenance run (reconcile) checks a second.

    python -m devkit.bench_maintenance [--rows 20000]

On a throwaway embedded Valkey and SQLite file: --rows unfinished rows, each a job still
queued in Redis (a backlog: reconcile looks each one up and leaves it), then one reconcile
over all of them with the worker's own ctx (startup), timed. Then the same rows once Redis
has lost them (looked up, not yet old enough to call lost). Prints rows/s for each. Not a
test: a figure for a person to compare before and after a change (`make bench` is the
queue's own benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from arq.connections import RedisSettings, create_pool
from arq.jobs import serialize_job

from devkit.valkey import EmbeddedValkey

PACKAGE = "stage4_retries_scheduling"
ROW_AGE_S = 60  # enqueued a minute ago: unfinished, not yet "lost"


def insert_rows(count: int) -> list[str]:
    ledger = importlib.import_module(f"{PACKAGE}.ledger")
    config = importlib.import_module(f"{PACKAGE}.config")
    store = ledger.Ledger(config.get_settings().database_url)
    store.create_schema()
    enqueued = datetime.now(UTC) - timedelta(seconds=ROW_AGE_S)
    ids = [uuid.uuid4().hex for _ in range(count)]
    row = {"function": "add", "args": {"x": 1, "y": 1}, "status": "queued", "result": None}
    rows = [
        row | {"job_id": job_id, "enqueue_time": enqueued, "updated_at": enqueued} for job_id in ids
    ]
    with store.db.engine.begin() as connection:
        connection.execute(ledger.JOBS.insert(), rows)
    store.close()
    return ids


async def queue_in_redis(redis, ids: list[str], queue_name: str, serializer) -> None:
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            job = serialize_job("add", (), {"x": 1, "y": 1}, None, now_ms, serializer=serializer)
            pipe.psetex(f"arq:job:{job_id}", 3_600_000, job)
            pipe.zadd(queue_name, {job_id: now_ms})
        await pipe.execute()


async def timed_reconcile(reconcile, ctx, rows: int) -> float:
    started = time.perf_counter()
    await reconcile.reconcile(ctx["ledger"], ctx["redis"], budget=rows)  # every row at once
    return time.perf_counter() - started


async def measure(rows: int, redis_url: str) -> None:
    worker = importlib.import_module(f"{PACKAGE}.worker")
    jobs = importlib.import_module(f"{PACKAGE}.jobs")
    reconcile = importlib.import_module(f"{PACKAGE}.reconcile")
    ids = insert_rows(rows)
    redis = await create_pool(RedisSettings.from_dsn(redis_url))
    ctx = {"redis": redis}
    await worker.startup(ctx)
    try:
        queue_name = worker.get_settings().queue_name
        await queue_in_redis(redis, ids, queue_name, jobs.serialize)
        queued_s = await timed_reconcile(reconcile, ctx, rows)
        await redis.flushdb()
        gone_s = await timed_reconcile(reconcile, ctx, rows)
    finally:
        await worker.shutdown(ctx)
        await redis.aclose()
    print(
        f"{rows} unfinished rows, queued in Redis: {queued_s:6.2f} s, {rows / queued_s:8.0f} rows/s"
    )
    print(f"{rows} unfinished rows, gone from Redis: {gone_s:6.2f} s, {rows / gone_s:8.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedValkey(Path(folder) / "valkey", persist=False)
        with server:
            os.environ.update(REDIS_URL=server.url, DATA_DIR=str(Path(folder) / "data"))
            os.environ.pop("DATABASE_URL", None)
            asyncio.run(measure(args.rows, server.url))


if __name__ == "__main__":
    main()
