"""jobkit.db: the engine's tuning, tables made by starters racing, aware times, and Database,
synchronous SQLAlchemy from async code (group commit, write-behind that survives a lock)."""

import asyncio
import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

import jobkit.db
from jobkit.db import Database, UTCDateTime, create_engine, create_tables
from tests.helpers import poll

metadata = sa.MetaData()
ROWS = sa.Table(
    "rows",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("value", sa.String(32), index=True),
    sa.Column("at", UTCDateTime, nullable=True),
)
INSERT = ROWS.insert()
READ_ALL = ROWS.select().order_by(ROWS.c.id)


def engine_for(tmp_path: Path) -> sa.Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'nested' / 'jobs.db'}")
    create_tables(metadata, engine)
    return engine


def test_create_tables_makes_the_sqlite_files_folder_and_tunes_every_connection(tmp_path):
    engine = engine_for(tmp_path)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        busy = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert busy == jobkit.db.BUSY_TIMEOUT_MS
    engine.dispose()
    assert (tmp_path / "nested" / "jobs.db").exists()


def test_a_postgresql_url_gets_its_timeouts_and_sqlite_gets_none():
    args = jobkit.db._connect_args("postgresql+psycopg://user@db.invalid/ledger")
    assert args["connect_timeout"] == jobkit.db.PG_CONNECT_TIMEOUT_S
    assert f"lock_timeout={jobkit.db.PG_LOCK_TIMEOUT_MS}" in args["options"]
    assert f"statement_timeout={jobkit.db.PG_STATEMENT_TIMEOUT_MS}" in args["options"]
    idle = f"idle_in_transaction_session_timeout={jobkit.db.PG_IDLE_IN_TRANSACTION_MS}"
    assert idle in args["options"]
    assert jobkit.db._connect_args("sqlite:///x.db") == {}


@pytest.mark.e2e  # starts a PostgreSQL of its own (tests/postgres.py)
def test_a_session_stopped_inside_a_transaction_frees_its_rows(new_postgres_database, monkeypatch):
    monkeypatch.setattr(jobkit.db, "PG_IDLE_IN_TRANSACTION_MS", 300)
    url = new_postgres_database()
    stopped, other = create_engine(url), create_engine(url)
    with stopped.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE job (id int PRIMARY KEY, status text)")
        connection.exec_driver_sql("INSERT INTO job VALUES (1, 'queued')")
    held = stopped.connect()
    held.begin()
    held.exec_driver_sql("UPDATE job SET status = 'in_progress' WHERE id = 1")
    # Its process does nothing more now, as a SIGSTOPped worker would, the row still locked.

    def another_writer_gets_the_row() -> bool:
        try:
            with other.begin() as connection:
                connection.exec_driver_sql("UPDATE job SET status = 'complete' WHERE id = 1")
        except sa.exc.OperationalError:  # lock_timeout: still held
            return False
        return True

    try:
        poll(another_writer_gets_the_row, 10, "the stopped session's lock to go")
    finally:
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            held.close()
        stopped.dispose()
        other.dispose()


def test_create_tables_gives_up_after_its_tries(tmp_path, monkeypatch):
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    calls = []

    def always_locked(*_args, **_kwargs) -> None:
        calls.append(1)
        raise sa.exc.OperationalError("CREATE TABLE", {}, sqlite3.OperationalError("locked"))

    monkeypatch.setattr(metadata, "create_all", always_locked)
    with pytest.raises(sa.exc.OperationalError):
        create_tables(metadata, engine)
    assert len(calls) == jobkit.db.CREATE_TRIES
    engine.dispose()


def test_times_come_back_aware_and_in_utc(tmp_path):
    engine = engine_for(tmp_path)
    eastern = datetime(2026, 12, 7, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    with engine.begin() as connection:
        connection.execute(
            INSERT, [{"id": 1, "value": "a", "at": eastern}, {"id": 2, "value": "b", "at": None}]
        )
    with engine.connect() as connection:
        rows = connection.execute(READ_ALL).mappings().all()
    engine.dispose()
    assert rows[0]["at"] == eastern and rows[0]["at"].tzinfo == UTC
    assert rows[1]["at"] is None


def test_writes_made_together_commit_together_and_are_read_back(tmp_path):
    async def main() -> list[dict]:
        db = Database(engine_for(tmp_path))
        await asyncio.gather(*(db.write(INSERT, {"id": n, "value": str(n)}) for n in range(50)))
        rows = await db.read(READ_ALL, dict)
        db.close()
        return rows

    rows = asyncio.run(main())
    assert [row["id"] for row in rows] == list(range(50))


def test_a_waited_for_write_that_fails_raises_in_its_caller(tmp_path):
    async def main() -> None:
        db = Database(engine_for(tmp_path))
        await db.write(INSERT, {"id": 1, "value": "a"})
        try:
            with pytest.raises(sa.exc.IntegrityError):
                await db.write(INSERT, {"id": 1, "value": "again"})
        finally:
            db.close()

    asyncio.run(main())


def test_run_does_a_read_then_a_write_in_one_transaction_after_earlier_writes(tmp_path):
    async def main() -> tuple[int, list[dict]]:
        db = Database(engine_for(tmp_path), write_behind=True)
        for n in range(5):
            await db.write(INSERT, {"id": n, "value": "old" if n < 3 else "new"})

        def prune(connection: sa.Connection) -> int:
            ids = connection.execute(sa.select(ROWS.c.id).where(ROWS.c.value == "old")).scalars()
            return connection.execute(ROWS.delete().where(ROWS.c.id.in_(list(ids)))).rowcount

        pruned = await db.run(prune)
        rows = await db.read(READ_ALL, dict)
        db.close()
        return pruned, rows

    pruned, rows = asyncio.run(main())
    assert pruned == 3
    assert [row["id"] for row in rows] == [3, 4]


def test_write_behind_returns_before_the_commit_and_flush_waits_for_it(tmp_path):
    async def main() -> tuple[list[dict], list[dict]]:
        db = Database(engine_for(tmp_path), write_behind=True)
        await db.write(INSERT, {"id": 1, "value": "a"})
        before = await db.read(READ_ALL, dict)  # the batch is still gathering
        await db.flush()
        after = await db.read(READ_ALL, dict)
        db.close()
        return before, after

    before, after = asyncio.run(main())
    assert before == []
    assert [row["id"] for row in after] == [1]


def test_write_behind_survives_a_lock_held_past_the_busy_timeout(tmp_path, monkeypatch, caplog):
    """The worker's writes are behind: a lock that outlasts SQLite's busy timeout must delay
    them, not drop them (they were once logged as lost, a fetch's try 2 with them)."""
    monkeypatch.setattr(jobkit.db, "BUSY_TIMEOUT_MS", 100)
    monkeypatch.setattr(jobkit.db, "WRITE_BEHIND_RETRY_S", 0.2)
    engine = engine_for(tmp_path)
    holder = sqlite3.connect(tmp_path / "nested" / "jobs.db", isolation_level=None)

    async def main() -> list[dict]:
        db = Database(engine, write_behind=True)
        holder.execute("BEGIN IMMEDIATE")  # a long transaction elsewhere
        for n in range(3):
            await db.write(INSERT, {"id": n, "value": "during the lock"})
        deadline = asyncio.get_running_loop().time() + 30
        while "writes failed" not in caplog.text:
            assert asyncio.get_running_loop().time() < deadline, "the commit never failed"
            await asyncio.sleep(0.01)  # the first commit waits out the lock, then fails
        holder.execute("ROLLBACK")
        await db.write(INSERT, {"id": 3, "value": "after it"})
        await db.flush()
        rows = await db.read(READ_ALL, dict)
        db.close()
        return rows

    try:
        rows = asyncio.run(main())
    finally:
        holder.close()
    assert [row["id"] for row in rows] == [0, 1, 2, 3]  # all of them, in order


def test_write_behind_loses_only_the_write_that_can_never_commit(tmp_path, caplog):
    async def main() -> list[dict]:
        db = Database(engine_for(tmp_path), write_behind=True)
        await db.write(INSERT, {"id": 1, "value": "a"})
        await db.write(INSERT, {"id": 1, "value": "the same id again"})  # fails its batch
        await db.flush()
        await db.write(INSERT, {"id": 2, "value": "b"})
        await db.flush()
        rows = await db.read(READ_ALL, dict)
        db.close()
        return rows

    rows = asyncio.run(main())
    assert [row["id"] for row in rows] == [1, 2]  # the batch went again, one write at a time
    assert caplog.text.count("1 write lost") == 1


def test_a_table_lacking_columns_the_model_has_stops_with_their_names_and_the_way_out(tmp_path):
    # create_all makes missing tables, never missing columns: an older ledger would start,
    # and then fail every query ("no such column") instead.
    older, newer = sa.MetaData(), sa.MetaData()
    sa.Table("jobs", older, sa.Column("job_id", sa.String(64), primary_key=True))
    sa.Table(
        "jobs",
        newer,
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("run_at", UTCDateTime),
        sa.Column("retry_of", sa.String(64)),
    )
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'jobs.db'}")
    create_tables(older, engine)
    create_tables(newer, engine)  # finds the table there, and leaves it as it is

    with pytest.raises(jobkit.db.SchemaOutOfDate) as stopped:
        jobkit.db.require_columns(newer, engine)
    message = str(stopped.value)
    assert "jobs.run_at, jobs.retry_of" in message
    assert "alembic -c migrations/alembic.ini upgrade head" in message
    assert str(tmp_path / "data") in message  # the tutorial's way out: delete its folder
    jobkit.db.require_columns(older, engine)  # what the table has: nothing to say
    engine.dispose()
