"""Stage 4: DELETE /jobs/{id} cancels a queued, deferred or running job."""

import json
import logging
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import pytest
from redis.exceptions import WatchError

from tests.helpers import (
    BackgroundWorker,
    enqueue,
    enqueue_behind_the_apis_back,
    poll,
    status,
    threads_running,
)
from tests.processes import Processes, free_port, stage_env
from tests.slowlink import SlowLink

pytestmark = pytest.mark.since_stage(4)

POLL_DEADLINE_S = 10.0
ADD = {"x": 5, "y": 10}


@pytest.mark.parametrize("schedule", [{}, {"delay_seconds": 60}], ids=["queued", "deferred"])
def test_cancelling_a_job_that_has_not_started_removes_it_so_it_never_runs(
    client, drain, raw_redis, schedule
):
    job_id = enqueue(client, "add", ADD, **schedule)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert raw_redis.zcard("arq:queue") == 0
    worker = drain()
    assert worker.jobs_complete == 0
    assert status(client, job_id) == "cancelled"


def test_cancelling_a_running_job_stops_it(stage, client, redis_url, settings_env):
    job_id = enqueue(client, "wait", {"seconds": 10})
    worker = BackgroundWorker(stage, redis_url)
    poll(lambda: status(client, job_id) == "in_progress", POLL_DEADLINE_S, "the job to start")
    started = time.monotonic()
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 5  # not the 10 s the job would have taken
    assert worker.join(POLL_DEADLINE_S).jobs_failed == 1  # ARQ counts an abort as failed
    assert status(client, job_id) == "cancelled"
    # The worker writes its attempt rows behind (worker.py): poll for it, don't assume it.
    poll(lambda: client.get(f"/jobs/{job_id}").json()["attempt_log"], 5, "the attempt row")
    log = client.get(f"/jobs/{job_id}").json()["attempt_log"]
    assert [(a["outcome"], a["error"]) for a in log] == [
        ("cancelled", "CancelledError: cancelled while running (DELETE /jobs/{id})")
    ]


def test_cancelling_a_finished_job_is_a_409_and_an_unknown_one_a_404(client, drain):
    job_id = enqueue(client, "add", ADD)
    drain()
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 409
    assert "complete" in response.json()["detail"]
    assert client.delete("/jobs/nope").status_code == 404


def test_cancelling_a_crunch_stops_its_thread_before_answering(
    stage, client, redis_url, settings_env, monkeypatch
):
    # A thread cannot be killed: crunch's loop must notice the cancel and stop by itself.
    burn_cpu = stage.module("tasks").burn_cpu
    # A worker that runs one job at a time may take a crunch this long (tasks.crunch_max_ms):
    # long enough to be certain to be running still when the DELETE comes.
    monkeypatch.setenv("MAX_JOBS", "1")
    stage.module("config").get_settings.cache_clear()
    job_id = enqueue(client, "crunch", {"ms": 5_000})
    worker = BackgroundWorker(stage, redis_url)
    poll(lambda: threads_running(burn_cpu), POLL_DEADLINE_S, "crunch's thread to start")
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert threads_running(burn_cpu) == 0  # stopped already, not seconds from now
    worker.join(POLL_DEADLINE_S)


def test_a_worker_claim_in_flight_when_the_job_is_cancelled_fails(client, drain, raw_redis):
    job_id = enqueue(client, "add", ADD)
    in_progress = f"arq:in-progress:{job_id}"
    # A worker's claim, command by command as arq's Worker.start_jobs sends it: it has read
    # the id from the queue, WATCHes the in-progress key and finds the job still queued...
    with raw_redis.pipeline(transaction=True) as claim:
        claim.watch(in_progress)
        assert not claim.exists(in_progress) and claim.zscore("arq:queue", job_id)
        # ...when the DELETE lands, before the claim's MULTI/EXEC.
        response = client.delete(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        claim.multi()
        claim.psetex(in_progress, 10_000, b"1")
        with pytest.raises(WatchError):  # otherwise the worker runs it: "job expired"
            claim.execute()
    worker = drain()
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 0)
    assert status(client, job_id) == "cancelled"


RACES = 150  # POST-then-DELETE pairs against a worker that is taking the same jobs
WORKER_POLL_S = 0.02  # about a DELETE's own time here, so that some DELETEs win and some lose
STARTED = re.compile(r"→ (\w+):add\(")
ABORTED = re.compile(r"⊘ (\w+):add aborted")


def redis_status(raw_redis, job_id: str) -> str:
    result = json.loads(raw_redis.get(f"arq:result:{job_id}"))
    if result["s"]:
        return "complete"
    return "cancelled" if result["r"]["error"].startswith("CancelledError") else "failed"


def test_racing_deletes_answer_truly_and_redis_and_the_ledger_agree(
    stage, client, redis_url, raw_redis, caplog, tmp_path
):
    caplog.set_level(logging.INFO, logger="arq.worker")
    keep_open = enqueue(client, "wait", {"seconds": 20})  # the burst worker stays until the end
    worker = BackgroundWorker(stage, redis_url, poll_delay=WORKER_POLL_S)
    poll(lambda: status(client, keep_open) == "in_progress", POLL_DEADLINE_S, "the worker")
    answers = {}
    for n in range(RACES):
        job_id = enqueue(client, "add", ADD)
        time.sleep(n % 5 * WORKER_POLL_S / 5)  # spread the DELETEs across the worker's poll
        answers[job_id] = client.delete(f"/jobs/{job_id}")
    racing = [response.status_code for response in answers.values()]
    print(f"\n{RACES} racing DELETEs: {racing.count(200)} cancelled, {racing.count(409)} too late")
    # Which way each race goes depends on the machine's timing. These two go one way each
    # for certain, so the checks below always see both answers: one DELETE long before the
    # job may run, one after it has finished.
    early = enqueue(client, "add", ADD, delay_seconds=5)
    answers[early] = client.delete(f"/jobs/{early}")
    late = enqueue(client, "add", ADD)
    poll(lambda: status(client, late) == "complete", POLL_DEADLINE_S, "the late job to finish")
    answers[late] = client.delete(f"/jobs/{late}")
    assert client.delete(f"/jobs/{keep_open}").status_code == 200
    worker.join(POLL_DEADLINE_S)

    log = caplog.text
    ran, stopped = set(STARTED.findall(log)), set(ABORTED.findall(log))
    ledger = sqlite3.connect(tmp_path / "data" / "jobs.db")
    rows = dict(ledger.execute("SELECT job_id, status FROM jobs"))
    ledger.close()
    for job_id, response in answers.items():
        assert response.status_code in (200, 409), response.text
        said = response.json()["status"] if response.status_code == 200 else "complete"
        if said == "cancelled":
            assert job_id not in ran or job_id in stopped, f"{job_id} ran, yet 'cancelled'"
        else:
            assert job_id in ran and "already finished: complete" in response.text
        assert redis_status(raw_redis, job_id) == rows[job_id] == said, job_id
    assert raw_redis.zcard("arq:abort") == 0  # no entry left to kill a later job
    outcomes = {response.status_code for response in answers.values()}
    assert outcomes == {200, 409}, outcomes


def test_cancelling_a_job_redis_has_lost_does_not_answer_still_running(client, raw_redis):
    # The row is open but Redis no longer has the job (a flush, a restart without its data):
    # no worker runs it or ever will. DELETE answered 202 "still running: cancellation
    # requested", about a job nothing runs, and left the row "deferred" for reconcile to call
    # "lost" minutes later.
    job_id = enqueue(client, "add", ADD, delay_seconds=60)
    raw_redis.flushdb()
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code != 202, response.text
    assert client.get(f"/jobs/{job_id}").json()["status"] in ("cancelled", "failed")


def age_row(tmp_path, job_id: str, seconds: float) -> None:
    """Make the job's row `seconds` older, as if it had been enqueued that long ago."""
    ledger = sqlite3.connect(tmp_path / "data" / "jobs.db")
    with ledger:
        ledger.execute(
            "UPDATE jobs SET enqueue_time = datetime(enqueue_time, ?) WHERE job_id = ?",
            (f"-{seconds} seconds", job_id),
        )
    ledger.close()


@pytest.mark.parametrize("lost", [False, True], ids=["young-row", "row-past-the-grace"])
def test_a_job_on_record_but_not_in_redis_is_cancelled_for_good(
    stage, client, drain, tmp_path, raw_redis, redis_url, lost
):
    # Not in Redis: on its way there (the row is written first), or lost with Redis's data.
    # "Redis no longer had this job" only past the grace period; either way the cancelled
    # result is a tombstone that an enqueue of the job, however late, cannot pass.
    job_id = enqueue(client, "add", ADD)
    raw_redis.delete(f"arq:job:{job_id}")
    raw_redis.zrem("arq:queue", job_id)
    if lost:
        age_row(tmp_path, job_id, stage.module("cancel").CREATING_GRACE_S + 60)
    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    why = "cancelled; Redis no longer had this job" if lost else "cancelled before it ran"
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"] == f"CancelledError: {why}"
    assert redis_status(raw_redis, job_id) == "cancelled"
    late = enqueue_behind_the_apis_back(stage, redis_url, "add", job_id, **ADD)
    assert late is None  # an enqueue that comes late: ARQ's own check refuses the id
    assert drain().jobs_complete == 0
    assert status(client, job_id) == "cancelled"


def test_a_cancelled_row_is_never_turned_into_complete_by_a_later_outcome(client, drain, tmp_path):
    # Whatever ran after a cancel (before the fix, an enqueue that landed late), the ledger
    # recorded its outcome over "cancelled": the client had been told one thing, the record
    # then said another. A cancelled row keeps its cancel.
    job_id = enqueue(client, "add", ADD)
    ledger = sqlite3.connect(tmp_path / "data" / "jobs.db")
    with ledger:
        ledger.execute(
            "UPDATE jobs SET status = 'cancelled', error = 'CancelledError: x' WHERE job_id = ?",
            (job_id,),
        )
    ledger.close()
    assert drain().jobs_complete == 1  # Redis still had it: the worker ran it
    cancelled = client.get(f"/jobs/{job_id}").json()
    assert (cancelled["status"], cancelled["error"]) == ("cancelled", "CancelledError: x")


# --- a DELETE while another API is still creating the job -------------------------------

SLOW_LINK_S = 0.15  # the creating API's link to Redis, each way, as the report had it
CREATING_DEADLINE_S = 30.0  # the creating API's Redis commands wait this long for the test


@pytest.mark.e2e
@pytest.mark.parametrize(
    "hold_at", [b"WATCH", b"MULTI"], ids=["before-its-check", "between-its-check-and-exec"]
)
def test_a_delete_while_another_api_creates_the_job_cancels_it_for_good(
    stage, client, drain, redis_url, raw_redis, tmp_path, hold_at
):
    # Two APIs share Redis and the ledger; A creates the job behind a slow link, B deletes it
    # between A's ledger row and A's enqueue. B answered "cancelled", A's enqueue landed
    # anyway, and the worker ran the job ("complete"; for fetch, the request went out).
    # The link is held at A's WATCH (ARQ's check that the id is free) or at its MULTI (the
    # check done, the transaction not yet sent), so that B's DELETE lands in that window
    # every time rather than now and then.
    data = tmp_path / "data"
    with (
        SlowLink(urlsplit(redis_url).port, delay_s=SLOW_LINK_S) as link,
        Processes(tmp_path / "logs") as procs,
    ):
        creating_env = stage_env(link.url, data, REDIS_TIMEOUT_S=str(CREATING_DEADLINE_S))
        creating = f"http://127.0.0.1:{(port := free_port())}"
        procs.api(stage, port, creating_env)
        deleting = f"http://127.0.0.1:{(port := free_port())}"
        procs.api(stage, port, stage_env(redis_url, data))
        link.hold_at(hold_at)
        with ThreadPoolExecutor(1) as pool:
            post = pool.submit(httpx.post, f"{creating}/tasks/add", json=ADD, timeout=60)
            poll(link.held.is_set, POLL_DEADLINE_S, "A's enqueue to reach the held link")
            [row] = httpx.get(f"{deleting}/jobs").json()["jobs"]  # on record, not yet in Redis
            deleted = httpx.delete(f"{deleting}/jobs/{row['job_id']}", timeout=30)
            link.release()
            created = post.result(timeout=60)
    job_id = row["job_id"]
    assert row["status"] == "queued"
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "cancelled"
    assert created.status_code == 202, created.text  # the job exists, and it is cancelled
    assert created.json()["job_id"] == job_id
    worker = drain()
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 0)  # it never ran
    assert status(client, job_id) == "cancelled"
    assert redis_status(raw_redis, job_id) == "cancelled"


def test_the_api_docs_call_delete_a_cancel(client):
    # FastAPI would name it after the function: "Delete Job". It cancels; nothing is deleted.
    delete = client.get("/openapi.json").json()["paths"]["/jobs/{job_id}"]["delete"]
    assert delete["summary"] == "Cancel a job"
