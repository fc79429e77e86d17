"""Stage 4: two API processes retrying one job at the same moment make one new job. Both read
"no retry yet"; the UNIQUE retry_of lets one insert, and the other reads the first's row
(Ledger.add_retry's IntegrityError path), on SQLite and on PostgreSQL."""

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import sqlalchemy as sa

from tests.helpers import enqueue, run_burst_worker
from tests.processes import Processes, free_port, stage_env

pytestmark = pytest.mark.since_stage(4)

DIVIDE = {"x": 1, "y": 0}
AT_ONCE = 8  # retries sent at the same moment, half to each API process


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)])
def database_url(request, stage, settings_env, monkeypatch) -> str:
    """An empty ledger: SQLite in tmp_path, or the session's PostgreSQL (tests/postgres.py)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database")
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute("DROP TABLE IF EXISTS jobs CASCADE")
        monkeypatch.setenv("DATABASE_URL", url)
        stage.module("config").get_settings.cache_clear()
    return stage.module("config").get_settings().database_url


def test_of_two_processes_inserting_one_retry_at_once_one_reads_the_others(stage, database_url):
    Ledger = stage.module("ledger").Ledger
    ours, theirs = Ledger(database_url), Ledger(database_url)  # two processes' ledgers
    ours.create_schema()
    old_id, their_id = uuid.uuid4().hex, uuid.uuid4().hex
    raced: list[str] = []

    def theirs_first(_conn, _cursor, statement: str, *_: object) -> None:
        # Our add_retry has read "no retry yet" and is about to insert: the other process
        # inserts its retry in between, as it would a moment earlier than us.
        if statement.startswith("INSERT INTO jobs") and not raced:
            raced.append(asyncio.run(theirs.add_retry(old, their_id, DIVIDE))[0])

    try:
        asyncio.run(ours.add(old_id, "divide", DIVIDE, status="failed"))
        old = asyncio.run(ours.get(old_id))
        sa.event.listen(ours.db.engine, "before_cursor_execute", theirs_first)
        made = asyncio.run(ours.add_retry(old, uuid.uuid4().hex, DIVIDE))
        retries = asyncio.run(ours.db.read(retries_of(old_id), dict))
    finally:
        ours.close()
        theirs.close()
    assert raced == [their_id]  # the other process's insert came in between
    assert made == (their_id, False)  # ours failed on UNIQUE, and read theirs
    assert [row["job_id"] for row in retries] == [their_id]


def retries_of(job_id: str) -> sa.Select:
    jobs = sa.table("jobs", sa.column("job_id"), sa.column("retry_of"))
    return sa.select(jobs.c.job_id).where(jobs.c.retry_of == job_id)


@pytest.mark.e2e  # two API processes
def test_retries_sent_at_once_to_two_api_processes_make_one_job(
    stage, database_url, redis_url, tmp_path
):
    env = stage_env(redis_url, tmp_path / "data")  # the test's ledger (and DATABASE_URL)
    with Processes(tmp_path / "logs") as started:
        urls = []
        for _ in range(2):
            port = free_port()
            started.api(stage, port, env)
            urls.append(f"http://127.0.0.1:{port}")
        with httpx.Client(base_url=urls[0], timeout=30) as client:
            old = enqueue(client, "divide", DIVIDE)
        asyncio.run(run_burst_worker(stage, redis_url))

        def retry(n: int) -> httpx.Response:
            return httpx.post(f"{urls[n % 2]}/jobs/{old}/retry", timeout=30)

        with ThreadPoolExecutor(AT_ONCE) as pool:
            answers = list(pool.map(retry, range(AT_ONCE)))
        listed = httpx.get(f"{urls[1]}/jobs", params={"function": "divide"}).json()["jobs"]
    assert [answer.status_code for answer in answers] == [202] * AT_ONCE
    assert len({answer.json()["job_id"] for answer in answers}) == 1
    assert len(listed) == 2  # the old job and one retry
