"""The Ledger: the jobs table (tables.py) for async code. Redis is the queue, this the record.

The API writes a job's row *before* it enqueues; the worker records its start, progress and
end, and each try in the attempt log. An ending the worker's hooks never saw (ARQ skips them
for some), or whose write it lost, is recorded from Redis by the read that finds it
(jobstore.read_job) and by the cron job (maintenance.reconcile), for all of them."""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobkit.charts import Chart, chart, chart_start, finished_since
from jobkit.dashboard import count_by, moving_jobs
from jobkit.db import Database, create_engine, create_tables, require_columns

from .jobs import FINAL, UNFINISHED, Attempt, JobView, Status
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
        this_job = JOBS.c.job_id == sa.bindparam("_job_id")
        self.update_unfinished = JOBS.update().where(this_job, JOBS.c.status.not_in(FINAL))
        self.update_progress = JOBS.update().where(this_job)
        self.insert_attempt = insert_attempt_if_on_record()  # Retries: the attempt log

    def create_schema(self) -> None:
        create_tables(LedgerModel.metadata, self.db.engine)
        # An older ledger lacks columns these tables have: stop here, saying how to upgrade.
        require_columns(LedgerModel.metadata, self.db.engine)

    async def add(
        self,
        job_id: str,
        function: str,
        args: dict[str, Any],
        status: str,
        run_at: datetime | None = None,
    ) -> None:
        """A new job's row; the columns not given take the table's defaults (progress 0)."""
        # A plain dict, not a JobRecord: this is the API's hottest write, and building an ORM
        # object for it is a measurable cost. result is NOT NULL: JSON null for now.
        row = dict(job_id=job_id, function=function, args=args, status=status, result=None)
        times = {"run_at": run_at, "enqueue_time": now(), "updated_at": now()}
        await self.db.write(self.insert_job, {**row, **times})

    async def update(self, job_id: str, **values: Any) -> None:
        """Change the job's row, unless it has finished: an ending, once recorded, stays (a
        cancel too: its client was told)."""
        values = {"_job_id": job_id, **values, "updated_at": now()}
        await self.db.write(self.update_unfinished, values)

    async def report_progress(self, job_id: str, progress: int, message: str | None) -> None:
        """The job's own report of how far it got. Not its state, so it is written even once
        the ending is recorded: a read may record the ending before this lands (jobstore)."""
        values = {"_job_id": job_id, "progress": progress, "message": message, "updated_at": now()}
        await self.db.write(self.update_progress, values)

    async def flush(self) -> None:
        await self.db.flush()

    async def get(self, job_id: str) -> JobView | None:
        """The job's row with its attempt log, in one query (the hottest read: GET /jobs/{id})."""
        query = JOB_AND_TRIES.where(JOBS.c.job_id == job_id).order_by(ATTEMPTS.c.attempt)
        return job_and_tries(await self.db.read(query, dict))

    async def newest(
        self,
        limit: int,
        status: str | None = None,
        function: str | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobView]:
        """Newest first, each with its attempt log; `after`: (enqueue_time, job_id) of the
        last row already seen."""
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
        page = query.order_by(*order).limit(limit)
        return await self.db.read_with(lambda connection: with_attempt_logs(connection, page))

    async def page(self, newest: int, also: Sequence[str]) -> tuple[dict[str, int], list[JobView]]:
        """For the jobs page (history.py): how many jobs are in each state, and the jobs that
        move (the newest, the unfinished, and `also` by id) with their tries, in one trip."""
        moving = moving_jobs(JOBS, UNFINISHED, newest, also)

        def read(connection: sa.Connection) -> tuple[dict[str, int], list[JobView]]:
            return count_by(connection, JOBS.c.status), with_attempt_logs(connection, moving)

        return await self.db.read_with(read)

    async def ping(self) -> None:
        await self.db.read(JOBS.select().limit(0), dict)

    def close(self) -> None:
        self.db.close()

    async def chart(self) -> Chart:
        """The last hour's jobs finished per minute, and their queue waits (GET /stats)."""
        since = chart_start(now())
        return chart(await self.db.read(finished_since(JOBS, since), dict), since)

    # --- Retry from the page: a new job for an old one, at most one (retry.py) ---
    async def add_retry(self, old: JobView, job_id: str, args: dict[str, Any]) -> tuple[str, bool]:
        """The row of `old`'s retry: a new one with id `job_id` (True), or the one already
        made (False). retry_of is UNIQUE: of two processes adding one at once, one fails
        and reads the other's. Not a group-committed write: its failure is its own."""
        row: dict[str, Any] = dict(job_id=job_id, function=old.function, args=args)
        row |= {"status": Status.QUEUED, "result": None, "retry_of": old.job_id}
        row |= {"enqueue_time": now(), "updated_at": now()}

        def add_once(connection: sa.Connection) -> tuple[str, bool]:
            made = JOBS.select().with_only_columns(JOBS.c.job_id)
            existing = connection.execute(made.where(JOBS.c.retry_of == old.job_id)).scalar()
            if existing is not None:
                return existing, False
            connection.execute(self.insert_job, row)
            return job_id, True

        try:
            return await self.db.run(add_once)
        except sa.exc.IntegrityError:  # another process added it in between
            return await self.db.run(add_once)

    async def failed_not_retried(self, function: str | None, limit: int) -> list[JobView]:
        """The newest failed jobs that have no retry yet (bulk retry, retry.py)."""
        no_retry = ~sa.exists().where(RETRY.c.retry_of == JOBS.c.job_id)
        query = JOBS.select().where(JOBS.c.status == Status.FAILED, no_retry)
        if function:
            query = query.where(JOBS.c.function == function)
        newest = query.order_by(JOBS.c.enqueue_time.desc(), JOBS.c.job_id.desc()).limit(limit)
        return await self.db.read(newest, JobView.model_validate)

    # --- Retries: the attempt log, a row per try (tables.AttemptRecord) ---
    async def add_attempt(self, values: dict[str, Any]) -> None:
        """Record one try of a job; nothing if the job is not on record."""
        row = dict.fromkeys(ATTEMPTS.columns.keys()) | values | {"updated_at": now()}
        await self.db.write(self.insert_attempt, row)


def with_attempt_logs(connection: sa.Connection, jobs: sa.Select[Any]) -> list[JobView]:
    """The jobs `jobs` selects, each with its tries in order: two queries for a whole page."""
    jobs = jobs.add_columns(RETRIED_BY.label("retried_by"))  # the retry of each, if any
    rows = connection.execute(jobs).mappings().all()
    ids = [row["job_id"] for row in rows]
    tries = ATTEMPTS.select().where(ATTEMPTS.c.job_id.in_(ids)).order_by(ATTEMPTS.c.attempt)
    logs: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in connection.execute(tries).mappings():
        logs[attempt["job_id"]].append(Attempt.model_validate(attempt))
    return [JobView.model_validate({**row, "attempt_log": logs[row["job_id"]]}) for row in rows]


# One job and its tries in one query: the job's columns, then each try's, named "try_...".
TRIES = [column.label(f"try_{column.name}") for column in ATTEMPTS.columns]
RETRY = JOBS.alias("retry")  # the job that retries this one, if any
RETRIED_BY = sa.select(RETRY.c.job_id).where(RETRY.c.retry_of == JOBS.c.job_id).scalar_subquery()
JOB_AND_TRIES = sa.select(JOBS, RETRIED_BY.label("retried_by"), *TRIES).outerjoin(
    ATTEMPTS, ATTEMPTS.c.job_id == JOBS.c.job_id
)


def job_and_tries(rows: list[Any]) -> JobView | None:
    """A job from its rows of JOB_AND_TRIES, a row per try (one with no try if none)."""
    if not rows:
        return None
    log = [
        Attempt.model_validate(
            {
                name.removeprefix("try_"): value
                for name, value in row.items()
                if name.startswith("try_")
            }
        )
        for row in rows
        if row["try_attempt"] is not None
    ]
    return JobView.model_validate({**rows[0], "attempt_log": log})
