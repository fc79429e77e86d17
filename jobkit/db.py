"""The ledger's database plumbing: what any app that keeps rows from async code needs.

- `create_engine(url)`: SQLAlchemy's engine, tuned so that an API and several workers can
  share one SQLite file (WAL, a busy timeout), and so that a stuck PostgreSQL costs a request a
  bounded wait rather than minutes (connect, lock and statement timeouts).
- `create_tables(metadata, engine)`: tables made by whichever of several processes starting at
  once gets there first, the others finding them made.
- `require_columns(metadata, engine)`: stop at start-up, saying how to upgrade it, when the
  database's tables lack columns the code's have (a ledger an older version made).
- `UTCDateTime`: aware UTC datetimes in and out, whatever the database keeps.
- `Database`: synchronous SQLAlchemy Core from async code. Reads run in a small pool of threads
  and writes in one writer thread, so the event loop never waits on the database. Writes that
  arrive while a transaction commits share the next one (group commit); with `write_behind`,
  a write does not even wait for its commit (the worker's mode: its hooks would otherwise spend
  most of a job's time waiting for commits).

A learner may skip this module. Stage 3's chapter explains the one idea behind it: never call a
blocking database from the event loop.
"""

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

T = TypeVar("T")
logger = logging.getLogger(__name__)

# A writer that finds the SQLite file locked waits up to this long for its turn, instead of
# failing at once with "database is locked".
BUSY_TIMEOUT_MS = 5_000
# PostgreSQL waits for a lock, or for a statement, as long as it takes unless told otherwise,
# and a server that does not answer holds a connection attempt for minutes. Bounded like SQLite
# above, a stuck database costs a request a 503 in seconds, not a hang.
PG_CONNECT_TIMEOUT_S = 2  # libpq's smallest
PG_LOCK_TIMEOUT_MS = 1_000
PG_STATEMENT_TIMEOUT_MS = 5_000
# A process that stops in the middle of a transaction (a worker SIGSTOPped, a paused VM, a host
# cut off) would hold its rows' locks until it came back, and every other writer of those jobs
# would wait and fail. The server ends such a session after this long idle in a transaction,
# which frees them; no healthy transaction here pauses for anything near it.
PG_IDLE_IN_TRANSACTION_MS = 10_000
# How many times a process starting beside others tries to create the tables.
CREATE_TRIES = 5
# Threads for reads. Few: they share the GIL with the event loop, so more add contention.
READ_THREADS = 2
# write_behind: writes gather this long before they commit together.
WRITE_BEHIND_S = 0.05
# write_behind: a batch that fails for a reason that may pass (the database locked past its
# busy timeout, a dropped connection) is tried again this many times, this far apart, before
# its writes are given up and logged. Nobody waits for them, so nobody else would notice.
WRITE_BEHIND_RETRIES = 5
WRITE_BEHIND_RETRY_S = 1.0


def create_engine(url: str) -> sa.Engine:
    """SQLAlchemy's engine for `url`, with SQLite's pragmas or PostgreSQL's timeouts set."""
    engine = sa.create_engine(url, connect_args=_connect_args(url))
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _tune_sqlite)
    return engine


def _tune_sqlite(connection: Any, _record: Any) -> None:
    # WAL lets readers carry on while a writer commits; busy_timeout makes a writer queue for the
    # lock; NORMAL syncs to disk at checkpoints, not every commit (a power cut may lose the last
    # commits but never corrupts the file). Many workers on many hosts want PostgreSQL.
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _connect_args(url: str) -> dict[str, Any]:
    if sa.make_url(url).get_backend_name() != "postgresql":
        return {}
    limits = (
        f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_MS}"
    )
    return {"connect_timeout": PG_CONNECT_TIMEOUT_S, "options": limits}


def create_tables(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """Create `metadata`'s missing tables (and a SQLite file's folder)."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
    # The API and the workers often start at once, and each may find a table missing: those that
    # lose the race to create it fail ("already exists", "database is locked"), and find it made
    # when they look again.
    for attempt in range(CREATE_TRIES):
        try:
            metadata.create_all(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == CREATE_TRIES - 1:
                raise


class SchemaOutOfDate(RuntimeError):
    """The database's tables lack columns the code's have: a ledger an older version made."""


def require_columns(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """SchemaOutOfDate, naming them, if a table lacks columns `metadata` has. create_tables
    makes missing tables, never missing columns: an older ledger would let the app start,
    and then fail every query that names them ("no such column")."""
    inspector = sa.inspect(engine)
    missing = []
    for table in metadata.sorted_tables:
        has = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [
            f"{table.name}.{column.name}" for column in table.columns if column.name not in has
        ]
    if missing:
        raise SchemaOutOfDate(_out_of_date(engine.url, missing))


def _out_of_date(url: sa.URL, missing: list[str]) -> str:
    where = url.render_as_string(hide_password=True)
    message = (
        f"The ledger at {where} lacks {', '.join(missing)}: it was made by an older version. "
        "Upgrade it with `alembic -c migrations/alembic.ini upgrade head` (tables the app made "
        "itself have no migration history yet: `stamp` the revision they match first, as "
        "docs/guides/your-app.md says)"
    )
    if url.get_backend_name() == "sqlite" and url.database:
        folder = Path(url.database).parent
        message += f", or, for the tutorial's own ledger, delete {folder} and start again"
    return message + "."


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out (SQLite keeps no time zone, PostgreSQL its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class PendingWrite:
    """One INSERT or UPDATE waiting for the next transaction."""

    statement: sa.Executable
    values: dict[str, Any]
    committed: asyncio.Future[None] | None  # resolved once it is; None: nobody waits for it


class Database:
    """Synchronous SQLAlchemy Core, called from async code without blocking the event loop.

    An async engine would need another driver per database, and aiosqlite runs SQLite in a
    thread anyway; plain SQLAlchemy in threads of our own works with every database. Reads go
    to READ_THREADS threads; writes to one writer thread, in the order they were made, each
    batch in one transaction.
    """

    def __init__(self, engine: sa.Engine, *, write_behind: bool = False) -> None:
        self.engine = engine
        self.write_behind = write_behind
        self.readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="db-read")
        # One writer, not asyncio's shared default pool: a thread that is always there is
        # cheaper to hand work to, and one writer keeps writes in order.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="db-write")
        self.pending: list[PendingWrite] = []
        self.committer: asyncio.Task[None] | None = None

    async def write(self, statement: sa.Executable, values: dict[str, Any]) -> None:
        """Run one INSERT/UPDATE/DELETE with `values` in the next transaction. Waits for the
        commit (its error is raised here), unless the Database writes behind."""
        loop = asyncio.get_running_loop()
        committed = None if self.write_behind else loop.create_future()
        self.pending.append(PendingWrite(statement, values, committed))
        if self.committer is None:
            self.committer = asyncio.create_task(self._commit_pending())
        if committed is not None:
            await committed

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            if self.write_behind:  # nobody waits: let a bigger batch gather
                await asyncio.sleep(WRITE_BEHIND_S)
            batch, self.pending = self.pending, []
            error: Exception | None = None
            try:
                await loop.run_in_executor(self.writer, self._commit, batch)
            except Exception as exc:
                error = exc
                if self.write_behind:
                    await self._retry_behind(batch, exc)
            for write in batch:
                done = write.committed
                if done is not None and not done.done():  # done already: its caller has gone
                    done.set_exception(error) if error else done.set_result(None)
        self.committer = None

    async def _retry_behind(self, batch: list[PendingWrite], error: Exception) -> None:
        """A failed write-behind batch: nobody can be told, so try it again, within reason.
        Writes made meanwhile wait behind it, so a job's writes still land in order."""
        loop = asyncio.get_running_loop()
        if not isinstance(error, sa.exc.OperationalError):
            # A constraint or a bug in one write: the same batch would fail the same way, so
            # its writes go one by one, and only the bad one is lost.
            await loop.run_in_executor(self.writer, self._commit_one_by_one, batch)
            return
        for attempt in range(1, WRITE_BEHIND_RETRIES + 1):
            logger.warning(
                "db: %d writes failed (%s); again in %g s (%d of %d)",
                *(len(batch), getattr(error, "orig", error), WRITE_BEHIND_RETRY_S, attempt),
                WRITE_BEHIND_RETRIES,
            )
            await asyncio.sleep(WRITE_BEHIND_RETRY_S)
            try:
                await loop.run_in_executor(self.writer, self._commit, batch)
                return
            except Exception as exc:
                error = exc
        logger.error("db: %d writes lost: %r", len(batch), error)

    def _commit_one_by_one(self, batch: list[PendingWrite]) -> None:
        for write in batch:
            try:
                self._commit([write])
            except Exception:
                logger.exception("db: 1 write lost")

    def _commit(self, batch: list[PendingWrite]) -> None:
        with self.engine.begin() as connection:  # one transaction; writes land in order
            for write in batch:
                connection.execute(write.statement, write.values)

    async def flush(self) -> None:
        """Wait until every write made so far has been committed (or given up)."""
        if self.committer is not None:
            await asyncio.shield(self.committer)

    async def read(self, query: sa.Executable, make: Callable[[Any], T]) -> list[T]:
        """Run `query` in a reader thread; each row (a mapping) becomes `make(row)`."""

        def read_rows() -> list[T]:
            # Core rows, not ORM objects: a Session costs several times as much a row.
            with self.engine.connect() as connection:
                return [make(row) for row in connection.execute(query).mappings()]

        return await asyncio.get_running_loop().run_in_executor(self.readers, read_rows)

    async def read_with(self, work: Callable[[sa.Connection], T]) -> T:
        """Run `work(connection)` in a reader thread: a read that takes several queries, in
        one trip to the thread."""

        def with_connection() -> T:
            with self.engine.connect() as connection:
                return work(connection)

        return await asyncio.get_running_loop().run_in_executor(self.readers, with_connection)

    async def run(self, work: Callable[[sa.Connection], T]) -> T:
        """Run `work(connection)` in one transaction, in the writer thread, after the writes
        made before it: for what a single statement cannot say (read, then delete)."""
        await self.flush()

        def in_transaction() -> T:
            with self.engine.begin() as connection:
                return work(connection)

        return await asyncio.get_running_loop().run_in_executor(self.writer, in_transaction)

    def close(self) -> None:
        self.readers.shutdown()
        self.writer.shutdown()
        self.engine.dispose()
