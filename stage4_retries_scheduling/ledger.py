"""The Ledger: the jobs table (tables.py) for async code. Redis is the queue, this the record.

The API writes a job's row *before* it enqueues, the worker records start, progress and end,
and an ending the worker's hooks missed (ARQ skips them for some) is recorded from Redis:
by GET /jobs/{id} for one job, by the cron job (reconcile.py) for all of them."""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.jobs import Job, JobResult

from .jobs import FINAL, Attempt, JobView, deserialize, outcome
from .tables import (
    ATTEMPTS,
    JOBS,
    create_engine,
    create_tables,
    insert_attempt_if_on_record,
    now,
)

# write_behind: writes gather this long, then commit together (each thread hand-over costs the loop)
WRITE_BEHIND_S = 0.05
# Threads for reads. Few: they share the GIL with the event loop, so more threads add
# contention, not speed (GET /jobs/{id} at c=50 on 2 cores: 6 threads ~1,400 req/s, 2 ~1,600).
READ_THREADS = 2
logger = logging.getLogger(__name__)


@dataclass
class PendingWrite:
    """One INSERT or UPDATE waiting for the next transaction."""

    statement: sa.Executable
    values: dict[str, Any]
    committed: asyncio.Future[None] | None  # resolved once it is; None: nobody waits for it


class Ledger:
    """The jobs table for async code: every query is a plain synchronous SQLAlchemy call run
    in a thread, so the event loop never waits on the database. (A blocking session called
    from async code stalled the reference project at ~16 concurrent requests; an async engine
    needs another driver per database, and aiosqlite runs SQLite in a thread anyway.) Writes
    that arrive while a transaction runs share the next one (group commit); with write_behind
    (the worker's) a write does not even wait for its commit."""

    def __init__(self, url: str, write_behind: bool = False) -> None:
        self.engine = create_engine(url)
        self.insert_job = JOBS.insert()
        self.update_any = JOBS.update().where(JOBS.c.job_id == sa.bindparam("_job_id"))
        self.update_unfinished = self.update_any.where(*(JOBS.c.status != s for s in FINAL))
        self.update_uncancelled = self.update_any.where(JOBS.c.status != "cancelled")
        self.insert_attempt = insert_attempt_if_on_record()  # Retries: the attempt log
        self.write_behind = write_behind
        self.readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ledger-read")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="ledger-write")  # _commit_pending
        self.pending: list[PendingWrite] = []
        self.committer: asyncio.Task[None] | None = None

    def create_schema(self) -> None:
        create_tables(self.engine)

    async def add(self, job_id: str, function: str, args: dict[str, Any], status: str) -> None:
        """A new job's row; the columns not given take the table's defaults (progress 0)."""
        # A plain dict, not a JobRecord: building the ORM's object for every enqueue made the
        # API ~1.2x slower to enqueue (paired wrk rounds). result is NOT NULL: JSON null for now.
        row = dict(job_id=job_id, function=function, args=args, status=status, result=None)
        await self._write(self.insert_job, {**row, "enqueue_time": now()})

    async def update(self, job_id: str, *, overwrite_final: bool = False, **values: Any) -> None:
        """Change the job's row if it has not finished (or even then, with overwrite_final)."""
        statement = self.update_any if overwrite_final else self.update_unfinished
        await self._write(statement, {"_job_id": job_id, **values})

    async def _write(self, statement: sa.Executable, values: dict[str, Any]) -> None:
        # A transaction per write would cap a worker at a quarter of stage 2's throughput:
        # it makes two or more writes per job, and a commit costs more than a job.
        committed = None if self.write_behind else asyncio.get_running_loop().create_future()
        self.pending.append(PendingWrite(statement, {**values, "updated_at": now()}, committed))
        if self.committer is None:
            self.committer = asyncio.create_task(self._commit_pending())
        if committed is not None:
            await committed

    async def _commit_pending(self) -> None:
        while self.pending:
            if self.write_behind:  # nobody waits: let a bigger batch gather
                await asyncio.sleep(WRITE_BEHIND_S)
            batch, self.pending = self.pending, []
            error: Exception | None = None
            try:  # a thread of our own: asyncio.to_thread's shared pool cost ~20% enqueue rate
                await asyncio.get_running_loop().run_in_executor(self.writer, self._commit, batch)
            except Exception as exc:
                error = exc
                if self.write_behind:  # nobody to tell; Redis still has the results
                    logger.exception("ledger: %d writes lost", len(batch))
            for write in batch:
                done = write.committed
                if done is not None and not done.done():  # done already: its caller has gone
                    done.set_exception(error) if error else done.set_result(None)
        self.committer = None

    def _commit(self, batch: list[PendingWrite]) -> None:
        with self.engine.begin() as connection:  # one transaction; a job's writes land in order
            for write in batch:
                connection.execute(write.statement, write.values)

    async def flush(self) -> None:
        if self.committer is not None:
            await asyncio.shield(self.committer)

    async def _read(
        self, query: sa.Select[Any], make: Callable[[Any], Any] = JobView.model_validate
    ) -> list[Any]:  # make: what a row becomes (Retries: the attempt log reads Attempts)
        def read_rows() -> list[Any]:
            # Core rows, not ORM objects: on this hot path a Session costs ~3x as much a row.
            with self.engine.connect() as connection:
                return [make(row) for row in connection.execute(query).mappings()]

        return await asyncio.get_running_loop().run_in_executor(self.readers, read_rows)

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
        self.readers.shutdown()
        self.writer.shutdown()
        self.engine.dispose()

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
        values = {"_job_id": job_id, **ended, **progress}
        await self._write(self.update_uncancelled, values)
        return ended

    # --- Retries: the attempt log, a row per try (tables.AttemptRecord) ---
    async def add_attempt(self, values: dict[str, Any]) -> None:
        """Record one try of a job; nothing if the job is not on record."""
        await self._write(self.insert_attempt, dict.fromkeys(ATTEMPTS.columns.keys()) | values)

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
