"""The Ledger: the jobs table (tables.py) for async code. Redis is the queue, this the record.

The API writes a job's row *before* it enqueues, the worker records start, progress and end,
and an ending the worker's hooks missed (ARQ skips them for some) is recorded from Redis:
by GET /jobs/{id} for one job, by the cron job (maintenance.reconcile) for all of them."""

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult

from jobkit.db import Database, create_engine, create_tables

from .jobs import FINAL, Attempt, JobView, deserialize, outcome
from .tables import ATTEMPTS, JOBS, LedgerModel, insert_attempt_if_on_record, now


class Ledger:
    """The jobs table for async code: every query is a plain synchronous SQLAlchemy call that
    jobkit.db runs in a thread, so the event loop never waits on the database. (A blocking
    session called from async code stalled the reference project at ~16 concurrent requests.)
    The worker's ledger writes behind: a write returns before its commit, so a job never waits
    for the database, and writes that arrive together share one transaction."""

    def __init__(self, url: str, write_behind: bool = False) -> None:
        self.db = Database(create_engine(url), write_behind=write_behind)
        self.insert_job = JOBS.insert()
        self.update_any = JOBS.update().where(JOBS.c.job_id == sa.bindparam("_job_id"))
        self.update_unfinished = self.update_any.where(*(JOBS.c.status != s for s in FINAL))
        self.update_uncancelled = self.update_any.where(JOBS.c.status != "cancelled")
        self.insert_attempt = insert_attempt_if_on_record()  # Retries: the attempt log

    def create_schema(self) -> None:
        create_tables(LedgerModel.metadata, self.db.engine)

    async def add(self, job_id: str, function: str, args: dict[str, Any], status: str) -> None:
        """A new job's row; the columns not given take the table's defaults (progress 0)."""
        # A plain dict, not a JobRecord: building the ORM's object for every enqueue made the
        # API ~1.2x slower to enqueue (paired wrk rounds). result is NOT NULL: JSON null for now.
        row = dict(job_id=job_id, function=function, args=args, status=status, result=None)
        await self.db.write(self.insert_job, {**row, "enqueue_time": now(), "updated_at": now()})

    async def update(self, job_id: str, *, overwrite_final: bool = False, **values: Any) -> None:
        """Change the job's row if it has not finished (or even then, with overwrite_final)."""
        statement = self.update_any if overwrite_final else self.update_unfinished
        await self.db.write(statement, {"_job_id": job_id, **values, "updated_at": now()})

    async def flush(self) -> None:
        await self.db.flush()

    async def _read(
        self, query: sa.Select[Any], make: Callable[[Any], Any] = JobView.model_validate
    ) -> list[Any]:  # make: what a row becomes (Retries: the attempt log reads Attempts)
        return await self.db.read(query, make)

    async def get(self, job_id: str) -> JobView | None:
        rows = await self._read(JOBS.select().where(JOBS.c.job_id == job_id))
        return rows[0] if rows else None

    async def newest(
        self,
        limit: int,
        status: str | None = None,
        function: str | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobView]:
        """Newest first; `after`: (enqueue_time, job_id) of the last row already seen."""
        query = JOBS.select()
        if status:
            query = query.where(JOBS.c.status == status)
        if function:
            query = query.where(JOBS.c.function == function)
        if after:
            when, job_id = after
            same_time = sa.and_(JOBS.c.enqueue_time == when, JOBS.c.job_id < job_id)
            query = query.where(sa.or_(JOBS.c.enqueue_time < when, same_time))
        order = (JOBS.c.enqueue_time.desc(), JOBS.c.job_id.desc())
        return await self._read(query.order_by(*order).limit(limit))

    async def ping(self) -> None:
        await self._read(JOBS.select().limit(0))

    def close(self) -> None:
        self.db.close()

    async def record_result_from_redis(
        self, redis: ArqRedis, job_id: str, queue_name: str
    ) -> dict[str, Any]:
        """If Redis holds the job's result, record how it ended and return that (JobView
        fields); an empty dict while it has not ended, or once Redis has forgotten it."""
        job = Job(job_id, redis, _queue_name=queue_name, _deserializer=deserialize)
        info = await job.result_info()
        return {} if info is None else await self.record_outcome(job_id, info)

    async def record_outcome(self, job_id: str, info: JobResult) -> dict[str, Any]:
        ended = outcome(info)
        progress = {"progress": 100} if info.success else {}
        # Over an ending recorded before (a "lost" job that turned up after all), but never
        # over a cancel: its client was told "cancelled", and Redis keeps the cancelled
        # result where the job's enqueue and its worker both find it (cancel.py).
        values = {"_job_id": job_id, **ended, **progress, "updated_at": now()}
        await self.db.write(self.update_uncancelled, values)
        return ended

    # --- Retries: the attempt log, a row per try (tables.AttemptRecord) ---
    async def add_attempt(self, values: dict[str, Any]) -> None:
        """Record one try of a job; nothing if the job is not on record."""
        row = dict.fromkeys(ATTEMPTS.columns.keys()) | values | {"updated_at": now()}
        await self.db.write(self.insert_attempt, row)

    async def attempts(self, job_id: str) -> list[Attempt]:
        return (await self.attempt_logs([job_id])).get(job_id, [])

    async def attempt_logs(self, job_ids: list[str]) -> dict[str, list[Attempt]]:
        """Each job's tries in order; one query for a whole page of jobs, not one per job."""
        query = ATTEMPTS.select().where(ATTEMPTS.c.job_id.in_(job_ids)).order_by(ATTEMPTS.c.attempt)
        rows = await self._read(query, lambda row: (row["job_id"], Attempt.model_validate(row)))
        logs: dict[str, list[Attempt]] = defaultdict(list)
        for job_id, attempt in rows:
            logs[job_id].append(attempt)
        return logs
