"""jobkit.dashboard and jobkit.charts: the jobs page's feed (one read for every open page, a
job that ends kept a while), the SQL behind it on a real SQLite file, the queue as the page
shows it, the guard on its actions, and stage 4's charts."""

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

import jobkit.charts
import jobkit.dashboard
from jobkit.dashboard import Feed, count_by, moving_jobs, page_queue
from jobkit.db import UTCDateTime, create_engine, create_tables
from jobkit.heartbeat import WorkerBeat
from jobkit.queue_state import QueueView
from jobkit.streams import Streams

metadata = sa.MetaData()
JOBS = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), index=True),
    sa.Column("enqueue_time", UTCDateTime),
    sa.Index("jobs_newest_first", "enqueue_time", "job_id"),
)


class State(BaseModel):
    jobs: list[dict[str, str]]
    also: list[str]


def ids(state: str) -> list[str]:
    return [job["job_id"] for job in State.model_validate_json(state).jobs]


def test_the_sql_selects_the_newest_the_unfinished_and_the_asked_for(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    create_tables(metadata, engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [("old-queued", "queued", 0), ("old-done", "complete", 1), ("asked", "failed", 2)]
    rows += [(f"new-{n}", "complete", 10 + n) for n in range(3)]
    with engine.begin() as connection:
        for job_id, status, minute in rows:
            when = start + timedelta(minutes=minute)
            connection.execute(JOBS.insert(), dict(job_id=job_id, status=status, enqueue_time=when))
    with engine.connect() as connection:
        query = moving_jobs(JOBS, {"queued", "in_progress"}, newest=2, also=["asked"])
        found = [row.job_id for row in connection.execute(query)]
        counts = count_by(connection, JOBS.c.status)
    engine.dispose()
    assert found == ["new-2", "new-1", "asked", "old-queued"]  # newest first
    assert counts == {"queued": 1, "complete": 4, "failed": 1}


def test_a_running_job_is_selected_however_many_deferred_jobs_wait(tmp_path):
    # The status index hands the unfinished rows back grouped by status, "deferred" before
    # "in_progress": with one limit for them all, a running job's bar froze behind them.
    engine = create_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    create_tables(metadata, engine)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    waiting = jobkit.dashboard.MAX_UNFINISHED + 20
    rows = [dict(job_id="running", status="in_progress", enqueue_time=start)]
    rows += [
        dict(job_id=f"later-{n}", status="deferred", enqueue_time=start + timedelta(seconds=n))
        for n in range(1, waiting + 1)
    ]
    with engine.begin() as connection:
        connection.execute(JOBS.insert(), rows)
    with engine.connect() as connection:
        query = moving_jobs(JOBS, {"deferred", "in_progress"}, newest=2, also=[])
        found = {row.job_id for row in connection.execute(query)}
    engine.dispose()
    assert "running" in found
    assert len(found) <= 2 + 2 * jobkit.dashboard.MAX_UNFINISHED  # still bounded


def test_every_follower_shares_one_read_and_an_ended_job_is_asked_for_a_while(monkeypatch):
    monkeypatch.setattr(jobkit.dashboard, "FEED_POLL_S", 0.01)
    reads: list[Sequence[str]] = []
    unfinished = {"a", "b"}

    async def read(also: Sequence[str]) -> tuple[State, set[str]]:
        reads.append(list(also))
        jobs = [{"job_id": job_id} for job_id in sorted(unfinished)]
        return State(jobs=jobs, also=list(also)), set(unfinished)

    async def scenario() -> list[list[str]]:
        streams = Streams()
        feed = Feed(streams, read)
        followers = [feed.follow() for _ in range(5)]
        firsts = [await anext(follower) for follower in followers]  # a read each
        assert len(reads) == 5
        unfinished.discard("a")  # job a ends
        later = await asyncio.gather(*(anext(follower) for follower in followers))
        asked = await asyncio.gather(*(anext(follower) for follower in followers))
        for follower in followers:
            await follower.aclose()
        streams.close()
        return [firsts[0], *later, *asked]

    states = asyncio.run(scenario())
    assert len(reads) <= 5 + 3  # five first reads, then a poll (or so) per change for all
    assert ids(states[0]) == ["a", "b"]
    assert {ids(state)[0] for state in states[1:]} == {"b"}
    assert State.model_validate_json(states[-1]).also == ["a"]  # the ended job, by id


def test_the_page_sees_ages_to_the_second():
    worker = WorkerBeat("w1", "host", 1, "2026-01-01T00:00:00Z", 2.4, 1, 2, 0, 0)
    view = QueueView(ready=1, scheduled=0, running=1, oldest_ready_age_s=3.7, workers=[worker])
    shown = page_queue(view)
    assert shown["oldest_ready_age_s"] == 4
    assert shown["workers"][0]["last_seen_s"] == 2
    assert page_queue(QueueView(0, 0, 0, None, []))["oldest_ready_age_s"] is None


@pytest.mark.parametrize("ended", [0, 250])
def test_endings_kept_are_bounded(monkeypatch, ended):
    async def read(also: Sequence[str]) -> tuple[State, set[str]]:
        return State(jobs=[], also=list(also)), set()

    async def scenario() -> int:
        feed = Feed(Streams(), read)
        feed.unfinished = {f"j{n}" for n in range(ended)}
        await feed._read("page")  # every one of them ended
        state = State.model_validate_json(await feed._read("page"))
        return len(state.also)

    assert asyncio.run(scenario()) == min(ended, jobkit.dashboard.MAX_ENDED)


PAGE = "http://127.0.0.1:8000"  # where the page is served from, and its requests' Origin


def guarded_app():
    from fastapi import Depends, FastAPI

    app = FastAPI()

    @app.post("/act", dependencies=[Depends(jobkit.dashboard.same_site_only)])
    async def act() -> dict[str, bool]:
        return {"done": True}

    return app


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, True),  # curl, a script
        ({"Origin": PAGE, "Sec-Fetch-Site": "same-origin"}, True),  # the page
        ({"Content-Type": "application/json"}, True),
        ({"Origin": "http://elsewhere.example"}, False),
        ({"Sec-Fetch-Site": "cross-site"}, False),
        ({"Sec-Fetch-Site": "same-site"}, False),
        ({"Content-Type": "application/x-www-form-urlencoded"}, False),
        ({"Content-Type": "multipart/form-data; boundary=x"}, False),
        ({"Content-Type": "text/plain;charset=UTF-8"}, False),
    ],
)
def test_an_action_refuses_what_another_sites_page_could_send(headers, allowed):
    from fastapi.testclient import TestClient

    response = TestClient(guarded_app(), base_url=PAGE).post("/act", headers=headers)
    assert response.status_code == (200 if allowed else 403)
    if not allowed:
        assert "Refused" in response.json()["detail"]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8000", True),
        ("127.25.0.3:8101", True),  # make scaleout's addresses
        ("[::1]:8000", True),
        ("localhost:8000", True),
        ("localhost", True),
        ("evil.example:8000", False),  # a name the attacker's DNS points at 127.0.0.1
        ("localhost.evil.example", False),
        ("jobs.internal:8000", False),  # until ALLOWED_HOSTS names it
    ],
)
def test_a_browsers_action_must_name_a_host_of_ours_not_a_rebound_name(host, allowed):
    # DNS rebinding: evil.example's page, its name re-pointed at 127.0.0.1, is same-origin
    # with itself. Its requests carry Origin and Host evil.example: they match each other,
    # but the Host is not ours.
    from fastapi.testclient import TestClient

    client = TestClient(guarded_app(), base_url=f"http://{host}")
    page = {"Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    response = client.post("/act", headers=page)
    assert response.status_code == (200 if allowed else 403), response.text
    if not allowed:
        assert "is not one of this server's names" in response.json()["detail"]
    assert client.post("/act").status_code == 200  # curl: not a browser, nobody to fool


def test_allowed_hosts_names_the_servers_other_names(monkeypatch):
    from fastapi.testclient import TestClient

    monkeypatch.setenv("ALLOWED_HOSTS", "jobs.internal, ops.example")
    client = TestClient(guarded_app(), base_url="http://jobs.internal:8000")
    page = {"Origin": "http://jobs.internal:8000", "Sec-Fetch-Site": "same-origin"}
    assert client.post("/act", headers=page).status_code == 200
    evil = TestClient(guarded_app(), base_url="http://evil.example:8000")
    page = {"Origin": "http://evil.example:8000", "Sec-Fetch-Site": "same-origin"}
    assert evil.post("/act", headers=page).status_code == 403


def test_a_job_that_stopped_changing_leaves_the_state(monkeypatch):
    monkeypatch.setattr(jobkit.dashboard, "RECENT_S", 0.05)
    jobs = [{"job_id": "a", "progress": "10"}]

    async def read(also: Sequence[str]) -> tuple[State, set[str]]:
        return State(jobs=[dict(job) for job in jobs], also=[]), {"a"}

    async def scenario() -> list[list[str]]:
        feed = Feed(Streams(), read)
        seen = [ids(await feed._read("page"))]
        await asyncio.sleep(0.1)
        seen.append(ids(await feed._read("page")))  # unchanged for longer than RECENT_S
        jobs[0]["progress"] = "20"
        seen.append(ids(await feed._read("page")))  # changed again
        return seen

    assert asyncio.run(scenario()) == [["a"], [], ["a"]]


def test_the_chart_counts_each_minute_by_outcome_with_nearest_rank_waits():
    now = datetime(2026, 1, 1, 12, 30, 40, tzinfo=UTC)
    since = jobkit.charts.chart_start(now)
    assert since == datetime(2026, 1, 1, 11, 31, tzinfo=UTC)

    def row(status, minute, wait_s, run_at=None):
        finish = since + timedelta(minutes=minute, seconds=30)
        start = finish - timedelta(seconds=1)
        enqueued = start - timedelta(seconds=wait_s)
        return dict(status=status, enqueue_time=enqueued, start_time=start, finish_time=finish,
                    run_at=run_at)  # fmt: skip

    rows = [row("complete", 59, wait) for wait in (1, 2, 3, 4)] + [row("failed", 59, 10)]
    deferred = row("complete", 0, 5, run_at=since + timedelta(seconds=30))  # due after it began
    rows.append(deferred)
    rows.append(row("complete", 61, 1))  # after the chart's end: not counted
    made = jobkit.charts.chart(rows, since)
    assert len(made.minutes) == jobkit.charts.CHART_MINUTES
    assert (made.complete[59], made.failed[59], made.complete[0]) == (4, 1, 1)
    assert (made.wait_p50_s[59], made.wait_p95_s[59]) == (3.0, 10.0)
    assert made.wait_p50_s[1] is None
    assert made.wait_p50_s[0] == 0.0  # a wait counts from the run time, never below 0
    assert jobkit.charts.percentile([5.0], 95) == 5.0


# Pages asking at once share the read in flight, even when no value is kept fresh.
@pytest.mark.parametrize(("fresh_s", "reads"), [(60.0, 1), (0.0, 2)])
def test_a_shared_read_answers_every_page_asking_while_it_is_fresh(monkeypatch, fresh_s, reads):
    monkeypatch.setattr(jobkit.dashboard, "SHARED_FOR_S", fresh_s)
    made: list[int] = []

    async def read() -> int:
        made.append(len(made))
        await asyncio.sleep(0.01)
        return len(made)

    async def scenario() -> list[int]:
        feed = Feed(Streams(), read_nothing)
        answers = list(await asyncio.gather(*(feed.shared("stats", read) for _ in range(2))))
        await asyncio.sleep(0.01)
        return [*answers, await feed.shared("stats", read)]

    answers = asyncio.run(scenario())
    assert len(made) == reads
    assert answers[-1] == reads


async def read_nothing(also: Sequence[str]) -> tuple[State, set[str]]:
    return State(jobs=[], also=[]), set()
