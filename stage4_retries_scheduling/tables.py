"""The ledger's tables: a row per job, and a row per try (jobkit/db.py makes the engine)."""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from jobkit.db import UTCDateTime


def now() -> datetime:
    # Retries: to the millisecond, as ARQ keeps its own times. A job's start_time is its first
    # try's, ours, and its finish_time ARQ's: mixing our microseconds with ARQ's milliseconds
    # could show a fast job finishing before it started.
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class LedgerModel(SQLModel, registry=registry()):
    """This stage's own table registry: another stage's `jobs` table can load alongside it."""


class JobRecord(LedgerModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("jobs_newest_first", "enqueue_time", "job_id"),
        sa.UniqueConstraint("retry_of", name="jobs_retry_of_key"),  # one retry per job
    )

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
    # Scheduling: when a deferred job is due. Retry from the page: the job this one retries;
    # UNIQUE, so an old job has at most one retry, however many clicks or tabs ask at once.
    run_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    retry_of: str | None = Field(default=None, max_length=64)


# The same table as SQLAlchemy Core sees it, for queries: JOBS.c.status, JOBS.select().
JOBS = LedgerModel.metadata.tables["jobs"]


# --- Retries: the attempt log, a row per try ---
# --8<-- [start:attempts_table]
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


# --8<-- [end:attempts_table]
ATTEMPTS = LedgerModel.metadata.tables["attempts"]


def insert_attempt_if_on_record() -> sa.Insert:
    # INSERT INTO attempts SELECT <the values> WHERE the job has a row. ARQ runs the job hooks
    # for every job, and some are not on record (each cron run, jobs other code enqueued):
    # their attempts would be orphans, 288 a day from the cron job alone.
    values = [sa.bindparam(column.name, type_=column.type) for column in ATTEMPTS.columns]
    on_record = sa.exists().where(JOBS.c.job_id == values[0])  # values[0] is job_id
    return ATTEMPTS.insert().from_select(
        ATTEMPTS.columns.keys(), sa.select(*values).where(on_record)
    )


# --- end of Retries ---
