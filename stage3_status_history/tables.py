"""The ledger's database: the jobs table, and the engine that reaches it; ledger.py uses both."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

# A writer that finds the SQLite file locked waits up to this long for its turn, instead
# of failing at once with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# PostgreSQL waits for a lock, or for a statement, as long as it takes unless told otherwise,
# and a server that does not answer holds a connection attempt for minutes. Bounded like
# SQLite above, a stuck database costs a request a 503 in about a second, not a hang.
PG_CONNECT_TIMEOUT_S = 2  # libpq's smallest
PG_LOCK_TIMEOUT_MS = 1_000
PG_STATEMENT_TIMEOUT_MS = 5_000
# How many times a process starting beside others tries to create the tables.
CREATE_TRIES = 5


def now() -> datetime:
    return datetime.now(UTC)


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


# --8<-- [end:table]
# The same table as SQLAlchemy Core sees it, for queries: JOBS.c.status, JOBS.select().
JOBS = LedgerModel.metadata.tables["jobs"]


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


def create_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, connect_args=connect_args(url))
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", tune_sqlite)
    return engine


def create_tables(engine: sa.Engine) -> None:
    if engine.dialect.name == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    # The API and the workers often start at once, and each may find a table missing: those
    # that lose the race to create it fail ("already exists"), and find it made when they look
    # again. (Six starting at once needed up to three tries: tests/test_ledger_schema.py.)
    for attempt in range(CREATE_TRIES):
        try:
            LedgerModel.metadata.create_all(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == CREATE_TRIES - 1:
                raise
