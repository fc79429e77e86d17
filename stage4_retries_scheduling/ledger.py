"""The job ledger: one database row per job, the record that Redis is not.

Redis is the queue. It forgets a result after KEEP_RESULT_S, loses everything on a flush,
and ARQ skips its job hooks for some endings (too many tries, expired, undecodable). So
the API writes the row *before* it enqueues, the worker records start and end, and
worker.reconcile settles the rows whose job ended behind the hooks' backs.
"""

import asyncio
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import DeserializationError, Job, JobResult, deserialize_result
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from .jobs import FINAL, Attempt, JobView, deserialize, outcome

# A writer that finds the SQLite file locked waits up to this long for its turn, instead
# of failing at once with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# PostgreSQL waits for a lock, or for a statement, as long as it takes unless told otherwise,
# and a server that does not answer holds a connection attempt for minutes. Bounded like
# SQLite above, a stuck database costs a request a 503 in about a second, not a hang.
PG_CONNECT_TIMEOUT_S = 2  # libpq's smallest
PG_LOCK_TIMEOUT_MS = 1_000
PG_STATEMENT_TIMEOUT_MS = 5_000
# With Ledger(wait=False), writes gather this long and are committed together: each hand-over
# to a database thread costs the event loop, so fewer and bigger batches.
WRITE_BEHIND_S = 0.05
# Threads for reads. Few: they share the GIL with the event loop, so more threads add
# contention, not speed (GET /jobs/{id} at c=50 on 2 cores: 6 threads ~1,400 req/s, 2 ~1,600).
READ_THREADS = 2
logger = logging.getLogger(__name__)


def now() -> datetime:
    # To the millisecond, as ARQ keeps its own times: a row that mixed our microseconds with
    # ARQ's milliseconds could show a fast job finishing before it started.
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out (SQLite keeps no time zone, PostgreSQL its own)."""

    impl, cache_ok = sa.DateTime(timezone=True), True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class LedgerModel(SQLModel, registry=registry()):
    """This stage's own table registry: another stage's `jobs` table can load alongside it."""


# --8<-- [start:table]
class JobRecord(LedgerModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (sa.Index("jobs_newest_first", "enqueue_time", "job_id"),)

    job_id: str = Field(primary_key=True, max_length=64)
    function: str = Field(index=True, max_length=64)
    args: dict[str, Any] = Field(sa_type=sa.JSON)
    status: str = Field(index=True, max_length=16)
    progress: int = 0
    message: str | None = None
    result: Any = Field(default=None, sa_type=sa.JSON)
    error: str | None = None
    attempts: int = 0
    enqueue_time: datetime = Field(sa_type=UTCDateTime)
    start_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finish_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=now, sa_type=UTCDateTime)


class AttemptRecord(LedgerModel, table=True):
    """One row per time a worker started the job: the retry history."""

    __tablename__ = "attempts"

    job_id: str = Field(primary_key=True, max_length=64)
    attempt: int = Field(primary_key=True)
    outcome: str = Field(max_length=16)  # complete, failed, cancelled, retrying, interrupted
    error: str | None = None
    start_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finish_time: datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_try_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # when retrying
    updated_at: datetime = Field(default_factory=now, sa_type=UTCDateTime)


# --8<-- [end:table]
JOBS: sa.Table = JobRecord.__table__  # type: ignore[attr-defined]
ATTEMPTS: sa.Table = AttemptRecord.__table__  # type: ignore[attr-defined]


def tune_sqlite(connection: Any, _record: Any) -> None:
    # One API and several workers write this one file at once. WAL lets readers carry on
    # while a writer commits; busy_timeout makes a writer queue for the lock; NORMAL syncs
    # to disk at checkpoints, not every commit (a power cut may lose the last commits but
    # never corrupts the file). A real deployment with many workers would use PostgreSQL.
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def connect_args(url: str) -> dict[str, Any]:
    if sa.make_url(url).get_backend_name() != "postgresql":
        return {}
    limits = f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}"
    return {"connect_timeout": PG_CONNECT_TIMEOUT_S, "options": limits}


def insert_attempt_if_on_record() -> sa.Insert:
    # INSERT INTO attempts SELECT <the values> WHERE the job has a row. ARQ runs the job hooks
    # for every job, and some are not on record (each cron run, jobs other code enqueued):
    # their attempts would be orphans, 288 a day from the cron job alone.
    values = [sa.bindparam(column.name, type_=column.type) for column in ATTEMPTS.columns]
    on_record = sa.exists().where(JOBS.c.job_id == values[0])  # values[0] is job_id
    return ATTEMPTS.insert().from_select(
        ATTEMPTS.columns.keys(), sa.select(*values).where(on_record)
    )


# --8<-- [start:ledger]
class Ledger:
    """The jobs table, for async code.

    Every query is a plain synchronous SQLAlchemy call run in a thread, so the event loop
    never waits on the database. (A blocking session called from async code stalled the
    reference project at ~16 concurrent requests.) The alternative, an async engine, needs
    another driver per database, and aiosqlite runs SQLite in a thread anyway. Writes that
    arrive while a transaction runs share the next one (group commit); with wait=False
    (the worker) a write does not even wait for its commit.
    """

    def __init__(self, url: str, wait: bool = True) -> None:
        self.engine = sa.create_engine(url, connect_args=connect_args(url))
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", tune_sqlite)
        by_id = JobRecord.job_id == sa.bindparam("_job_id")
        self.statements = {
            "add": sa.insert(JobRecord),
            "update": sa.update(JobRecord).where(by_id, *(JobRecord.status != s for s in FINAL)),
            "overwrite": sa.update(JobRecord).where(by_id),
            "attempt": insert_attempt_if_on_record(),
        }
        self.wait = wait
        self.readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ledger-read")
        self.pending: list[tuple[str, dict[str, Any], asyncio.Future[None] | None]] = []
        self.committer: asyncio.Task[None] | None = None

    def create_schema(self) -> None:
        if self.engine.dialect.name == "sqlite" and self.engine.url.database:
            Path(self.engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        try:
            LedgerModel.metadata.create_all(self.engine)
        except sa.exc.DBAPIError:  # the API and a worker starting at once: the other one won
            LedgerModel.metadata.create_all(self.engine)

    async def add(self, record: JobRecord) -> None:
        await self._write("add", record.model_dump())

    async def add_attempt(self, values: dict[str, Any]) -> None:
        """Record one try of a job; nothing if the job is not on record."""
        await self._write("attempt", dict.fromkeys(ATTEMPTS.columns.keys()) | values)

    async def update(self, job_id: str, *, overwrite_final: bool = False, **values: Any) -> None:
        """Change the job's row if it has not finished (or even then, with overwrite_final)."""
        kind = "overwrite" if overwrite_final else "update"
        await self._write(kind, {"_job_id": job_id, **values})

    async def _write(self, kind: str, values: dict[str, Any]) -> None:
        # A transaction per write would cap a worker at a quarter of stage 2's throughput:
        # it makes two or more writes per job, and a commit costs more than a job.
        done = asyncio.get_running_loop().create_future() if self.wait else None
        self.pending.append((kind, {**values, "updated_at": now()}, done))
        if self.committer is None:
            self.committer = asyncio.create_task(self._commit_pending())
        if done is not None:
            await done

    async def _commit_pending(self) -> None:
        while self.pending:
            if not self.wait:  # nobody waits: let a bigger batch gather (see WRITE_BEHIND_S)
                await asyncio.sleep(WRITE_BEHIND_S)
            batch, self.pending = self.pending, []
            error: Exception | None = None
            try:
                await asyncio.to_thread(self._commit, [(kind, values) for kind, values, _ in batch])
            except Exception as exc:
                error = exc
                if not self.wait:  # nobody to tell: Redis still has the results (reconcile)
                    logger.exception("ledger: %d writes lost", len(batch))
            for *_, done in batch:
                if done is not None and not done.done():  # done: its caller has gone
                    done.set_exception(error) if error else done.set_result(None)
        self.committer = None

    def _commit(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        # One executemany per statement and set of columns. A job's own writes keep their
        # order: its second write in this batch goes in round 1, after every first write.
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        rounds: Counter[str] = Counter()
        for kind, values in batch:
            job_id = values.get("_job_id", values.get("job_id"))
            groups[(rounds[job_id], kind, *sorted(values))].append(values)
            rounds[job_id] += 1
        with self.engine.begin() as connection:
            for (_, kind, *_), rows in sorted(groups.items(), key=lambda group: group[0][0]):
                connection.execute(self.statements[kind], rows)

    async def flush(self) -> None:
        if self.committer is not None:
            await asyncio.shield(self.committer)

    # --8<-- [end:ledger]

    def _read_rows(self, query: Any, make: Callable[[Any], Any]) -> list[Any]:
        # Core rows, not ORM objects: a status read is the hot path, and an ORM Session
        # costs about three times as much per row.
        with self.engine.connect() as connection:
            return [make(row) for row in connection.execute(query).mappings()]

    async def _read(
        self, query: Any, make: Callable[[Any], Any] = JobView.model_validate
    ) -> list[Any]:
        return await asyncio.get_running_loop().run_in_executor(
            self.readers, self._read_rows, query, make
        )

    async def get(self, job_id: str) -> JobView | None:
        rows = await self._read(JOBS.select().where(JOBS.c.job_id == job_id))
        return rows[0] if rows else None

    async def newest(
        self, limit: int, status: str | None = None, function: str | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobView]:  # fmt: skip
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

    async def prune(self, finished_before: datetime, limit: int) -> int:
        """Delete up to `limit` finished jobs (and their attempts) that ended before
        `finished_before`, oldest first; returns how many jobs."""
        old = sa.and_(JOBS.c.status.in_(FINAL), JOBS.c.finish_time < finished_before)
        oldest = sa.select(JOBS.c.job_id).where(old).order_by(JOBS.c.finish_time, JOBS.c.job_id)

        def delete() -> int:
            with self.engine.begin() as connection:
                ids = connection.execute(oldest.limit(limit)).scalars().all()
                connection.execute(ATTEMPTS.delete().where(ATTEMPTS.c.job_id.in_(ids)))
                return connection.execute(JOBS.delete().where(JOBS.c.job_id.in_(ids))).rowcount

        return await asyncio.to_thread(delete)

    async def prune_orphans(self, limit: int) -> int:
        """Delete up to `limit` attempts whose job has no row (earlier versions left them)."""
        orphan = ~sa.exists().where(JOBS.c.job_id == ATTEMPTS.c.job_id)
        ids = sa.select(ATTEMPTS.c.job_id).where(orphan).limit(limit)

        def delete() -> int:
            with self.engine.begin() as connection:
                return connection.execute(
                    ATTEMPTS.delete().where(ATTEMPTS.c.job_id.in_(ids))
                ).rowcount

        return await asyncio.to_thread(delete)

    async def unfinished(
        self, limit: int | None = None, after: tuple[datetime, str] | None = None
    ) -> list[JobView]:
        """Rows whose job has not ended, oldest first; `after`: (enqueue_time, job_id) of the
        last row already seen."""
        query = JOBS.select().where(JOBS.c.status.not_in(FINAL))
        if after:
            when, job_id = after
            same_time = sa.and_(JOBS.c.enqueue_time == when, JOBS.c.job_id > job_id)
            query = query.where(sa.or_(JOBS.c.enqueue_time > when, same_time))
        order = (JOBS.c.enqueue_time, JOBS.c.job_id)
        return await self._read(query.order_by(*order).limit(limit))

    async def ping(self) -> None:
        await self._read(JOBS.select().limit(0))

    def close(self) -> None:
        self.readers.shutdown()
        self.engine.dispose()

    async def copy_result(self, redis: ArqRedis, job_id: str, queue_name: str) -> dict[str, Any]:
        """If Redis holds the job's result, record it in the ledger and return how it ended
        (JobView fields); an empty dict while it has not ended."""
        job = Job(job_id, redis, _queue_name=queue_name, _deserializer=deserialize)
        info = await job.result_info()  # None: not finished, or Redis has forgotten it
        return {} if info is None else await self._record(job_id, info)

    async def _record(self, job_id: str, info: JobResult) -> dict[str, Any]:
        ended = outcome(info)
        progress = {"progress": 100} if info.success else {}
        await self.update(job_id, overwrite_final=True, **ended, **progress)
        return ended

    async def copy_results(
        self, redis: ArqRedis, job_ids: list[str], queue_name: str
    ) -> dict[str, str]:
        """copy_result for many jobs in one Redis round trip. Per job: "ended" (its outcome is
        now recorded), "live" (Redis has it queued or running) or "gone" (Redis has no trace)."""
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:  # what Job.result_info, status and info read, in one go
                pipe.get(result_key_prefix + job_id)
                pipe.exists(job_key_prefix + job_id)
                pipe.exists(in_progress_key_prefix + job_id)
                pipe.zscore(queue_name, job_id)
            replies = await pipe.execute()
        states, writes = {}, []
        for n, job_id in enumerate(job_ids):
            result, job, running, score = replies[4 * n : 4 * n + 4]
            if result is None:
                states[job_id] = "live" if job and (running or score is not None) else "gone"
                continue
            states[job_id] = "ended"
            try:
                info = deserialize_result(result, deserializer=deserialize)
            except DeserializationError:  # not JSON, so not ours (a planted pickle?): settle it
                error = "undecodable: its result in Redis is not JSON, so this app never wrote it"
                writes.append(self.update(job_id, status="failed", error=error, finish_time=now()))
            else:
                writes.append(self._record(job_id, info))
        await asyncio.gather(*writes)  # writes that arrive together share one transaction
        return states
