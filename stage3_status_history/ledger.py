"""The Ledger: the jobs table (tables.py) for async code. Redis is the queue, this the record.

The API writes a job's row *before* it enqueues; the worker records its start, progress and
end. An ending the worker's hooks never saw (ARQ skips them for some), or whose write it
lost, is recorded from Redis by the read that finds it (jobstore.read_job); stage 4 adds a
cron job that settles every unfinished row."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from jobkit.dashboard import count_by, moving_jobs
from jobkit.db import Database, create_engine, create_tables, require_columns

from .jobs import FINAL, UNFINISHED, JobView
from .tables import JOBS, LedgerModel, now


class Ledger:
    # --8<-- [start:ledger]
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

    def create_schema(self) -> None:
        create_tables(LedgerModel.metadata, self.db.engine)
        # An older ledger lacks columns these tables have: stop here, saying how to upgrade.
        require_columns(LedgerModel.metadata, self.db.engine)

    async def add(self, job_id: str, function: str, args: dict[str, Any], status: str) -> None:
        """A new job's row; the columns not given take the table's defaults (progress 0)."""
        # A plain dict, not a JobRecord: this is the API's hottest write, and building an ORM
        # object for it is a measurable cost. result is NOT NULL: JSON null for now.
        row = dict(job_id=job_id, function=function, args=args, status=status, result=None)
        await self.db.write(self.insert_job, {**row, "enqueue_time": now(), "updated_at": now()})

    async def update(self, job_id: str, **values: Any) -> None:
        """Change the job's row, unless it has finished: an ending, once recorded, stays."""
        await self.db.write(
            self.update_unfinished, {"_job_id": job_id, **values, "updated_at": now()}
        )

    async def report_progress(self, job_id: str, progress: int, message: str | None) -> None:
        """The job's own report of how far it got. Not its state, so it is written even once
        the ending is recorded: a read may record the ending before this lands (jobstore)."""
        values = {"_job_id": job_id, "progress": progress, "message": message, "updated_at": now()}
        await self.db.write(self.update_progress, values)

    async def flush(self) -> None:
        await self.db.flush()

    # --8<-- [end:ledger]

    async def _read(self, query: sa.Select[Any]) -> list[JobView]:
        return await self.db.read(query, JobView.model_validate)

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

    async def page(self, newest: int, also: Sequence[str]) -> tuple[dict[str, int], list[JobView]]:
        """For the jobs page (history.py): how many jobs are in each state, and the jobs that
        move (the newest, the unfinished, and `also` by id), in one trip to the database."""
        moving = moving_jobs(JOBS, UNFINISHED, newest, also)

        def read(connection: sa.Connection) -> tuple[dict[str, int], list[JobView]]:
            rows = connection.execute(moving).mappings()
            return count_by(connection, JOBS.c.status), [JobView.model_validate(r) for r in rows]

        return await self.db.read_with(read)

    async def ping(self) -> None:
        await self._read(JOBS.select().limit(0))

    def close(self) -> None:
        self.db.close()
