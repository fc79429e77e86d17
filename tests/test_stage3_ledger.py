"""Stage 3+: the job ledger. Every test runs on SQLite and on PostgreSQL (tests/postgres.py)."""

import asyncio
import base64
import json
import os
import sqlite3
import threading
import time
from datetime import datetime

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import jobkit.streams
from devkit.valkey import EmbeddedValkey
from tests.helpers import enqueue, run_reconcile

pytestmark = pytest.mark.since_stage(3)

FINAL = {"complete", "failed"}


# The PostgreSQL variant starts a server of its own (tests/postgres.py): an e2e test.
@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)], autouse=True)
def database(request, settings_env, monkeypatch, stage) -> str:
    """Point DATABASE_URL at an empty ledger: SQLite in tmp_path, or the session's PostgreSQL."""
    if request.param == "sqlite":
        return "sqlite"
    postgres_database = request.getfixturevalue("postgres_database")
    with psycopg.connect(postgres_database.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS jobs")
    monkeypatch.setenv("DATABASE_URL", postgres_database)
    stage.module("config").get_settings.cache_clear()
    return request.param


def test_a_finished_job_is_still_answered_after_its_redis_result_expires(client, drain, raw_redis):
    job_id = enqueue(client, "add", {"x": 5, "y": 10})
    drain()
    raw_redis.delete(f"arq:result:{job_id}")  # what the TTL does an hour later

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete"
    assert job["result"] == 15
    assert job["attempts"] == 1
    assert job["progress"] == 100
    assert job["enqueue_time"] <= job["start_time"] <= job["finish_time"], job


def test_history_survives_a_redis_flushall_with_results_and_errors(client, drain, raw_redis):
    added = enqueue(client, "add", {"x": 1, "y": 2})
    divided = enqueue(client, "divide", {"x": 1, "y": 0})
    drain()
    raw_redis.flushall()

    assert client.get(f"/jobs/{added}").json()["result"] == 3
    failed = client.get(f"/jobs/{divided}").json()
    assert failed["status"] == "failed"
    assert failed["error"] == "ZeroDivisionError: float division by zero"
    listed = client.get("/jobs").json()["jobs"]
    assert [(job["job_id"], job["status"]) for job in listed] == [
        (divided, "failed"),
        (added, "complete"),
    ]


def test_the_row_is_written_before_the_job_is_enqueued(client, raw_redis):
    job_id = enqueue(client, "add", {"x": 1, "y": 2})
    raw_redis.flushall()  # Redis loses the queued job
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "queued"
    assert job["args"] == {"x": 1, "y": 2}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # it holds SQLite's write lock
def test_a_job_reaches_redis_only_once_its_row_is_committed(stage, client, raw_redis, database):
    path = sa.make_url(stage.module("config").get_settings().database_url).database
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the ledger's commit now waits (busy_timeout) for us
    replies = []
    poster = threading.Thread(
        target=lambda: replies.append(client.post("/tasks/add", json={"x": 1, "y": 2}))
    )
    poster.start()
    try:
        deadline = time.monotonic() + 0.5  # well inside the ledger's 5 s busy_timeout
        while time.monotonic() < deadline:
            assert raw_redis.zcard("arq:queue") == 0, "enqueued before its row was committed"
            time.sleep(0.01)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    poster.join()
    assert replies[0].status_code == 202
    assert raw_redis.zcard("arq:queue") == 1


def over_max_tries(client, raw_redis) -> str:
    # ARQ counts tries in arq:retry:<id>; past max_tries (ARQ's default: 5) the next pickup
    # fails the job without running it and without calling any job hook.
    job_id = enqueue(client, "add", {"x": 1, "y": 2})
    raw_redis.set(f"arq:retry:{job_id}", 5)
    return job_id


def test_a_job_over_max_tries_ends_failed_when_it_is_read(client, drain, raw_redis):
    job_id = over_max_tries(client, raw_redis)
    drain()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "failed"  # read: copied from Redis
    raw_redis.flushall()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"] == "JobExecutionFailed: max 5 retries exceeded"


def test_reading_a_job_that_ended_before_its_row_did_shows_the_ending_and_records_it(client, drain):
    # The worker's writes go behind; here they never come (no after_job_end hook), as when a
    # worker dies between the result in Redis and its commit. The read answers the ending
    # from Redis, progress included, and records it: a read repair.
    job_id = enqueue(client, "add", {"x": 2, "y": 3})
    drain(after_job_end=None)
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["result"], job["progress"]) == ("complete", 5, 100)
    assert job["finish_time"] is not None
    (row,) = client.get("/jobs").json()["jobs"]
    assert (row["status"], row["result"], row["progress"]) == ("complete", 5, 100)


@pytest.mark.since_stage(4)  # stage 4's cron job sweeps; stage 3 has no sweep
def test_reconcile_settles_a_job_that_ended_without_the_hooks(stage, client, drain, raw_redis):
    job_id = over_max_tries(client, raw_redis)
    drain()
    assert client.get("/jobs").json()["jobs"][0]["status"] == "queued"  # no hook ran

    assert run_reconcile(stage) == 1
    raw_redis.flushall()
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["error"]) == ("failed", "JobExecutionFailed: max 5 retries exceeded")


@pytest.mark.since_stage(4)  # stage 4's cron job sweeps; stage 3 has no sweep
@pytest.mark.parametrize("key", ["arq:result:{}", "arq:job:{}"])
def test_reconcile_carries_on_past_a_job_whose_data_in_redis_is_not_json(
    stage, client, drain, raw_redis, key
):
    other = over_max_tries(client, raw_redis)
    drain()  # `other` ends failed in Redis, behind the hooks' backs
    planted = enqueue(client, "add", {"x": 1, "y": 1})
    raw_redis.set(key.format(planted), b"\x80\x04 not JSON, so not ours")

    settled = run_reconcile(stage)

    job = client.get(f"/jobs/{other}").json()
    assert (job["status"], job["error"]) == ("failed", "JobExecutionFailed: max 5 retries exceeded")
    if key == "arq:result:{}":  # the outcome can never be read: settled, saying why
        assert settled == 2
        job = client.get(f"/jobs/{planted}").json()
        assert job["status"] == "failed"
        assert "not JSON" in job["error"]
    else:  # still queued in Redis: the worker fails it ("unable to deserialize") and says so
        assert settled == 1
        assert (
            client.get("/jobs", params={"status": "queued"}).json()["jobs"][0]["job_id"] == planted
        )


@pytest.mark.since_stage(4)  # stage 4's cron job sweeps; stage 3 has no sweep
def test_reconcile_marks_a_job_that_redis_lost_failed(stage, client, raw_redis, monkeypatch):
    job_id = enqueue(client, "add", {"x": 1, "y": 2})
    raw_redis.flushall()
    assert run_reconcile(stage) == 0  # not yet: it might still be on its way to Redis
    monkeypatch.setattr(stage.module("maintenance"), "LOST_AFTER_S", 0)
    assert run_reconcile(stage) == 1
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"].startswith("lost: Redis no longer knows this job")


@pytest.mark.e2e  # a Valkey of its own, to stop
def test_a_job_redis_refused_is_recorded_failed_not_left_queued(stage, tmp_path, monkeypatch):
    server = EmbeddedValkey(tmp_path / "valkey", persist=False)
    server.start()
    monkeypatch.setenv("REDIS_URL", server.url)
    stage.module("config").get_settings.cache_clear()
    with TestClient(stage.module("main").app) as client:
        server.stop()
        assert client.post("/tasks/add", json={"x": 1, "y": 2}).status_code == 503
        [job] = client.get("/jobs").json()["jobs"]
    assert job["status"] == "failed"
    assert job["error"].startswith("not enqueued: Redis is unavailable")


def test_progress_shows_while_running_and_ends_at_100(client, drain):
    job_id = enqueue(client, "report", {"steps": 4, "step_seconds": 0})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["status"], job["result"]) == ("complete", 4)
    assert (job["progress"], job["message"]) == (100, "step 4 of 4")


def test_progress_events_arrive_in_order_and_end_with_the_final_state(
    stage, client, drain, monkeypatch
):
    monkeypatch.setattr(jobkit.streams, "EVENTS_MAX_S", 30)  # if the worker never came
    job_id = enqueue(client, "report", {"steps": 5, "step_seconds": 0.2})
    worker = threading.Thread(target=drain)
    worker.start()
    response = client.get(f"/jobs/{job_id}/events")  # returns once the stream has ended
    worker.join()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: ") :]) for line in response.text.splitlines()
              if line.startswith("data: ")]  # fmt: skip
    order = ["queued", "in_progress", "complete"]
    assert [order.index(e["status"]) for e in events] == sorted(
        order.index(e["status"]) for e in events
    )
    assert [e["progress"] for e in events] == sorted(e["progress"] for e in events)
    assert any(0 < e["progress"] < 100 for e in events), events
    assert (events[-1]["status"], events[-1]["progress"], events[-1]["result"]) == (
        "complete",
        100,
        5,
    )
    assert len({json.dumps(e, sort_keys=True) for e in events}) == len(events)  # only changes
    # The worker writes a little behind; its last progress report still lands after the
    # stream (the API) has recorded the end.
    assert client.get(f"/jobs/{job_id}").json()["message"] == "step 5 of 5"


def test_the_event_stream_of_an_unknown_job_is_a_json_404(client):
    response = client.get("/jobs/nope/events")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]


def test_the_list_filters_by_status_and_function(client, drain):
    added = [enqueue(client, "add", {"x": n, "y": 1}) for n in range(3)]
    failed = [enqueue(client, "divide", {"x": 1, "y": 0}) for _ in range(2)]
    drain()
    ids = lambda query: [job["job_id"] for job in client.get(f"/jobs?{query}").json()["jobs"]]  # noqa: E731
    assert ids("status=failed") == failed[::-1]
    assert ids("function=add") == added[::-1]
    assert ids("function=divide&status=complete") == []
    assert ids("") == (added + failed)[::-1]


def b64(key: str | bytes) -> str:
    return base64.urlsafe_b64encode(key if isinstance(key, bytes) else key.encode()).decode()


BAD_CURSORS = {
    "garbage": "garbage",
    "not-a-cursor": "A" * 40,
    "latest-time-west": b64("9999-12-31T23:59:59-14:00|x"),  # past year 9999 in UTC
    "earliest-time-east": b64("0001-01-01T00:00:00+14:00|x"),  # before year 1 in UTC
    "no-time-zone": b64("2026-01-01T00:00:00|x"),
    "other-separator": b64("2026-01-01T00:00:00+00:00;x"),
    "two-separators": b64("2026-01-01T00:00:00+00:00|x|y"),
    "not-a-time": b64("yesterday|x"),
    "no-job-id": b64("2026-01-01T00:00:00+00:00|"),
    "nul-in-job-id": b64("2026-01-01T00:00:00+00:00|\x00"),
    "job-id-too-long": b64("2026-01-01T00:00:00+00:00|" + "a" * 65),
    "not-utf8": b64(b"\xff\xfe|\xc3"),
    "not-ascii": "é" * 8,
    "huge": b64("2026-01-01T00:00:00+00:00|" + "a" * 10_000),
}


@pytest.mark.parametrize(
    "query",
    ["status=done", "function=rm", "limit=0", "limit=101"]
    + [f"cursor={cursor}" for cursor in BAD_CURSORS.values()],
    ids=["status", "function", "limit-0", "limit-101", *BAD_CURSORS],
)
def test_a_bad_list_query_is_a_json_422(client, query):
    enqueue(client, "add", {"x": 1, "y": 2})  # a cursor is only compared once there are rows
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


def test_pagination_stays_correct_while_new_jobs_arrive(client):
    older = [enqueue(client, "add", {"x": n, "y": 0}) for n in range(7)][::-1]  # newest first
    first = client.get("/jobs?limit=3").json()
    newer = [enqueue(client, "add", {"x": n, "y": 0}) for n in range(2)]
    second = client.get(f"/jobs?limit=3&cursor={first['next_cursor']}").json()
    third = client.get(f"/jobs?limit=3&cursor={second['next_cursor']}").json()
    pages = [[job["job_id"] for job in page["jobs"]] for page in (first, second, third)]
    assert pages == [older[:3], older[3:6], older[6:]]
    assert third["next_cursor"] is None
    assert [job["job_id"] for job in client.get("/jobs?limit=2").json()["jobs"]] == newer[::-1]


def test_the_default_page_size_is_20_and_the_maximum_100(client):
    for n in range(21):
        enqueue(client, "add", {"x": n, "y": 0})
    page = client.get("/jobs").json()
    assert len(page["jobs"]) == 20
    assert page["next_cursor"] is not None
    assert len(client.get("/jobs?limit=100").json()["jobs"]) == 21


JOB_S = 0.2  # how long each of the 500 jobs sleeps


def test_500_jobs_with_an_api_and_two_busy_workers_writing_leave_500_final_rows(client, drain):
    # Two burst workers of 25 concurrent jobs each write while the API keeps inserting. Each
    # job sleeps long enough that jobs overlap however slow the machine is: the assertion is
    # that writes really were concurrent, not how many a second this machine manages.
    job_ids = [enqueue(client, "wait", {"seconds": JOB_S}) for _ in range(250)]
    workers = [threading.Thread(target=drain, kwargs={"max_jobs": 25}) for _ in range(2)]
    for worker in workers:
        worker.start()
    job_ids += [enqueue(client, "wait", {"seconds": JOB_S}) for _ in range(250)]
    for worker in workers:
        worker.join()
    drain(max_jobs=25)  # what arrived after both burst workers found the queue empty

    rows, cursor = [], ""
    while cursor is not None:
        page = client.get(f"/jobs?limit=100{cursor and f'&cursor={cursor}'}").json()
        rows += page["jobs"]
        cursor = page["next_cursor"]
    assert sorted(row["job_id"] for row in rows) == sorted(job_ids)
    assert {row["status"] for row in rows} == {"complete"}
    spans = [(datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["finish_time"]))
             for r in rows]  # fmt: skip
    busiest = max(sum(start <= moment < finish for start, finish in spans) for moment, _ in spans)
    assert busiest >= 2, f"at most {busiest} jobs ran at once: the writes never overlapped"


def test_the_jobs_page_and_its_files_are_served_from_the_app(client):
    # What the page does is tested in a browser (tests/test_jobs_page.py); here, that it
    # needs nothing from another server: its script and styles come from the app itself.
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    for path, kind in [("/static/jobs.js", "javascript"), ("/static/jobs.css", "text/css")]:
        response = client.get(path)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]


def test_the_jobs_pages_reads_work_on_the_ledgers_database(stage, app, client, drain):
    # The SQL behind the page (jobkit.dashboard), on SQLite and on PostgreSQL: counts, the
    # jobs that move, and in stage 4 the charts and a retry (a UNIQUE column).
    done = enqueue(client, "add", {"x": 1, "y": 2})
    failed = enqueue(client, "divide", {"x": 1, "y": 0})
    drain()
    waiting = enqueue(client, "add", {"x": 3, "y": 4})

    counts, jobs = asyncio.run(app.state.ledger.page(1, [done]))
    assert counts == {"complete": 1, "failed": 1, "queued": 1}
    assert [job.job_id for job in jobs] == [waiting, done]  # the newest, the unfinished, `also`
    if stage.number >= 4:
        chart = client.get("/stats").json()
        assert (sum(chart["complete"]), sum(chart["failed"])) == (1, 1)
        retried = client.post(f"/jobs/{failed}/retry").json()["job_id"]
        assert client.post(f"/jobs/{failed}/retry").json()["job_id"] == retried
        assert client.get(f"/jobs/{failed}").json()["retried_by"] == retried
        assert client.post("/jobs/retry", json={}).json()["retried"] == []


HANG_S = 20  # a request still waiting this long for the lock would wait for ever


def hold_lock(url: str, locked: threading.Event, release: threading.Event) -> None:
    with psycopg.connect(url) as connection:  # one transaction, rolled back at the end
        connection.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        locked.set()
        release.wait(HANG_S)  # then a request that hung gets its answer, and the test fails


# PostgreSQL only: SQLite readers never wait for a writer (WAL), and its writers wait 5 s.
@pytest.mark.parametrize("database", [pytest.param("postgresql", marks=pytest.mark.e2e)],
                         indirect=True)  # fmt: skip
def test_a_locked_postgresql_table_costs_a_503_in_seconds_not_a_hang(
    client, database, postgres_database
):
    job_id = enqueue(client, "add", {"x": 1, "y": 2})
    locked, release = threading.Event(), threading.Event()
    url = postgres_database.replace("+psycopg", "")
    locker = threading.Thread(target=hold_lock, args=(url, locked, release))
    locker.start()
    try:
        assert locked.wait(HANG_S)
        answers = {}
        for path in (f"/jobs/{job_id}", "/health"):
            started = time.monotonic()
            response = client.get(path)
            answers[path] = (response.status_code, time.monotonic() - started, response.text)
    finally:
        release.set()
        locker.join()
    assert {path: status for path, (status, *_) in answers.items()} == {
        f"/jobs/{job_id}": 503,
        "/health": 503,
    }, answers
    assert all(seconds < HANG_S / 2 for _, seconds, _ in answers.values()), answers
    assert all("database" in text for *_, text in answers.values()), answers
    assert client.get(f"/jobs/{job_id}").status_code == 200  # and back once the lock is gone


@pytest.mark.parametrize("database", [pytest.param("postgresql", marks=pytest.mark.e2e)],
                         indirect=True)  # fmt: skip
def test_the_postgresql_variant_runs_on_a_server_the_tests_started(postgres_database):
    # Never on the machine's own PostgreSQL: the tests create and drop databases.
    if os.environ.get("LEDGER_TEST_POSTGRES"):
        pytest.skip("LEDGER_TEST_POSTGRES names a server of your choosing")
    with psycopg.connect(postgres_database.replace("+psycopg", "")) as connection:
        (data_dir,) = connection.execute("SELECT current_setting('data_directory')").fetchone()
    assert "/ledger-postgres-" in data_dir, data_dir


def test_the_ledger_is_a_sqlite_file_in_the_data_dir_unless_database_url_says_otherwise(
    client, database, tmp_path
):
    assert (tmp_path / "data" / "jobs.db").exists() == (database == "sqlite")
