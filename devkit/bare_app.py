"""The yardstick for `make bench`: a bare FastAPI + ARQ app. Not a lesson; do not copy it.

The least a FastAPI developer would write for the same HTTP shapes as the stages: a body
model, one ArqRedis pool from arq's `create_pool` opened in the lifespan, a JSON job
serializer, no middleware, no exception handlers, no response models, no ledger, no limits
on the input. The bench runs it beside the stages, the same way, and prints every stage's
figures as a ratio of this app's: absolute figures on a shared 2-core machine drift from
day to day, ratios within one run do not.

With BARE_DB=1 (the bench's "bare+db", the yardstick for stages 3 and 4) POST /tasks/add
also commits the job's row to SQLite before it enqueues, as the stages' ledger does, in the
plainest correct way: stdlib sqlite3, stage 3's jobs table and pragmas (WAL, synchronous
NORMAL: a commit survives the process, not a power cut), one connection in one thread of its
own (so the event loop never waits on the file), one commit per request. What that costs is
what a committed record costs, before any framework or batching.

    uvicorn devkit.bare_app:app      # REDIS_URL (default redis://127.0.0.1:6379/0)
    arq devkit.bare_app.WorkerSettings
    BARE_DB=1 uvicorn devkit.bare_app:app   # rows in $DATA_DIR/bare.db (default .data/bare)
"""

import asyncio
import json
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job, JobStatus
from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel

REDIS = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
POLL_DELAY_S = 0.05  # the stages' worker setting, so the latency phase compares code
WRITE_ROWS = os.environ.get("BARE_DB") == "1"
DB_FILE = Path(os.environ.get("DATA_DIR", ".data/bare")) / "bare.db"
SCHEMA = """
    CREATE TABLE IF NOT EXISTS jobs (
        job_id VARCHAR(64) NOT NULL, function VARCHAR(64) NOT NULL, args JSON NOT NULL,
        status VARCHAR(16) NOT NULL, progress INTEGER NOT NULL, message VARCHAR,
        result JSON NOT NULL, error VARCHAR, attempts INTEGER NOT NULL,
        enqueue_time DATETIME NOT NULL, start_time DATETIME, finish_time DATETIME,
        updated_at DATETIME NOT NULL, PRIMARY KEY (job_id));
    CREATE INDEX IF NOT EXISTS ix_jobs_function ON jobs (function);
    CREATE INDEX IF NOT EXISTS ix_jobs_status ON jobs (status);
    CREATE INDEX IF NOT EXISTS jobs_newest_first ON jobs (enqueue_time, job_id);
"""  # stage 3's, as SQLAlchemy creates it; and the same columns in its INSERT:
INSERT = (
    "INSERT INTO jobs (job_id, function, args, status, progress, result, attempts,"
    " enqueue_time, updated_at) VALUES (?, ?, ?, 'queued', 0, 'null', 0, ?, ?)"
)


def serialize(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.redis = await create_pool(
        REDIS, job_serializer=serialize, job_deserializer=json.loads
    )
    if WRITE_ROWS:
        app.state.db_thread = ThreadPoolExecutor(1)  # the connection is only used there
        app.state.db = await in_db_thread(app, open_db)
    yield
    await app.state.redis.aclose()
    if WRITE_ROWS:
        await in_db_thread(app, app.state.db.close)
        app.state.db_thread.shutdown()


def open_db() -> sqlite3.Connection:
    DB_FILE.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(DB_FILE, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")  # stage 3's pragmas (sqlite3's busy timeout is 5 s)
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(SCHEMA)
    return db


async def in_db_thread(app: FastAPI, call: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(app.state.db_thread, call, *args)


def insert_row(db: sqlite3.Connection, job_id: str, function: str, args: dict) -> None:
    when = datetime.now(UTC).isoformat()
    with db:  # one transaction, committed on the way out
        db.execute(INSERT, (job_id, function, json.dumps(args), when, when))


app = FastAPI(lifespan=lifespan)


class AddArgs(BaseModel):
    x: int
    y: int


@app.get("/ping")
async def ping() -> dict[str, str]:
    return {"ping": "pong"}


@app.post("/tasks/add", status_code=202)
async def add_task(args: AddArgs, request: Request, response: Response):
    job_id = uuid.uuid4().hex  # ARQ's own default, made here so the row can come first
    if WRITE_ROWS:
        await in_db_thread(
            request.app, insert_row, request.app.state.db, job_id, "add", args.model_dump()
        )
    job = await request.app.state.redis.enqueue_job("add", x=args.x, y=args.y, _job_id=job_id)
    response.headers["Location"] = f"/jobs/{job.job_id}"
    return {"job_id": job.job_id, "status_url": f"/jobs/{job.job_id}"}


@app.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request):
    job = Job(job_id, request.app.state.redis, _deserializer=json.loads)
    status = await job.status()
    info = await job.info()  # the result once finished (with start and finish times)
    if status == JobStatus.not_found or info is None:
        raise HTTPException(404, "no such job")
    return {**asdict(info), "job_id": job_id, "status": status.value}


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


class WorkerSettings:
    functions = [add]
    redis_settings = REDIS
    job_serializer = serialize
    job_deserializer = json.loads
    poll_delay = POLL_DELAY_S
