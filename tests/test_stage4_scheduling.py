"""Stage 4: deferred jobs, idempotency keys, cancel, per-task timeouts."""

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import enqueue, poll, run_burst_worker, status

pytestmark = pytest.mark.since_stage(4)

POLL_DEADLINE_S = 10.0
ADD = {"x": 5, "y": 10}


def test_a_job_with_run_at_is_deferred_until_then_runs_no_earlier(client, drain):
    run_at = datetime.now(UTC) + timedelta(seconds=1)
    job_id = enqueue(client, "add", ADD, run_at=run_at.isoformat())
    assert status(client, job_id) == "deferred"
    drain()  # a burst worker waits for deferred jobs
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete"
    assert datetime.fromisoformat(job["start_time"]) >= run_at - timedelta(milliseconds=5)


def test_delay_seconds_defers_too(client):
    job_id = enqueue(client, "add", ADD, delay_seconds=60)
    assert status(client, job_id) == "deferred"


def test_a_time_in_the_past_runs_now(client):
    job_id = enqueue(
        client, "add", ADD, run_at=(datetime.now(UTC) - timedelta(hours=1)).isoformat()
    )
    assert status(client, job_id) == "queued"


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"run_at": "2030-01-01T10:00:00"}, "timezone"),  # naive: refused, not guessed
        ({"run_at": "tomorrow"}, "ISO 8601"),
        ({"run_at": "0.0"}, "ISO 8601"),  # found by the fuzzer: was taken as a Unix time
        ({"delay_seconds": -1}, "greater than or equal"),
        ({"delay_seconds": 10**9}, "at most"),
        ({"delay_seconds": 251606808162.0}, "at most"),  # found by the fuzzer: was a 500
        ({"run_at": "2099-01-01T00:00:00Z"}, "at most"),
        ({"run_at": "2030-01-01T10:00:00Z", "delay_seconds": 5}, "not both"),
    ],
)
def test_bad_schedules_are_a_422_and_enqueue_nothing(client, raw_redis, params, why):
    response = client.post("/tasks/add", json={"x": 1, "y": 2}, params=params)
    assert response.status_code == 422, response.text
    assert why in response.text
    assert raw_redis.zcard("arq:queue") == 0


def test_the_same_idempotency_key_and_body_returns_the_same_job(client, raw_redis):
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers)
    second = client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert raw_redis.zcard("arq:queue") == 1


def test_an_idempotent_replay_works_with_delay_seconds_too(client, raw_redis):
    # The schedule as asked for is what counts, not "now + delay", which moves on.
    headers = {"Idempotency-Key": "later-1"}
    params = {"delay_seconds": 60}
    first = client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers, params=params)
    second = client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers, params=params)
    assert first.status_code == second.status_code == 202, second.text
    assert first.json()["job_id"] == second.json()["job_id"]
    assert raw_redis.zcard("arq:queue") == 1


def test_the_same_idempotency_key_with_another_body_is_a_409(client, raw_redis):
    headers = {"Idempotency-Key": "order-43"}
    assert client.post("/tasks/add", json={"x": 1, "y": 2}, headers=headers).status_code == 202
    conflict = client.post("/tasks/add", json={"x": 1, "y": 3}, headers=headers)
    assert conflict.status_code == 409
    assert "different request" in conflict.json()["detail"]
    assert raw_redis.zcard("arq:queue") == 1


def test_idempotency_keys_expire_after_the_documented_window(stage, client, raw_redis):
    ttl_s = stage.module("config").get_settings().idempotency_ttl_s
    client.post("/tasks/add", json={"x": 1, "y": 2}, headers={"Idempotency-Key": "k"})
    assert ttl_s - 5 <= raw_redis.ttl("idempotency:k") <= ttl_s


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
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(worker=asyncio.run(run_burst_worker(stage, redis_url)))
    )
    thread.start()
    deadline = time.monotonic() + POLL_DEADLINE_S
    while status(client, job_id) != "in_progress":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)
    started = time.monotonic()
    response = client.delete(f"/jobs/{job_id}")
    thread.join(POLL_DEADLINE_S)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert time.monotonic() - started < 5  # not the 10 s the job would have taken
    assert result["worker"].jobs_failed == 1  # ARQ counts an aborted job as failed
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


def test_a_job_over_its_timeout_fails_with_a_clear_reason(stage, client, drain, monkeypatch):
    monkeypatch.setitem(stage.module("worker").TASK_TIMEOUTS_S, "wait", 0.2)
    job_id = enqueue(client, "wait", {"seconds": 5})
    started = time.monotonic()
    drain(functions=stage.module("worker").task_functions())
    job = client.get(f"/jobs/{job_id}").json()
    assert time.monotonic() - started < 3
    assert job["status"] == "failed"
    assert "TimeoutError" in job["error"]
    assert job["attempts"] == 1  # not retried
