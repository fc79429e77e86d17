"""The ledger's table: a row per job (jobkit/db.py makes the engine that reaches it)."""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from jobkit.db import UTCDateTime


def now() -> datetime:
    return datetime.now(UTC)


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


# --8<-- [end:table]
# The same table as SQLAlchemy Core sees it, for queries: JOBS.c.status, JOBS.select().
JOBS = LedgerModel.metadata.tables["jobs"]
