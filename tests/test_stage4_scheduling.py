"""Stage 4: deferred jobs (`run_at`, `delay_seconds`)."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import enqueue, status

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


def test_a_time_in_the_past_runs_now_and_the_answer_says_so(client):
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    response = client.post("/tasks/add", json=ADD, params={"run_at": past})
    assert response.status_code == 202, response.text
    assert response.json()["detail"] == "run_at is in the past: the job runs now"
    assert status(client, response.json()["job_id"]) == "queued"


@pytest.mark.parametrize("when", ["now", "delay_seconds", "run_at"])
def test_a_job_that_runs_when_asked_gets_no_detail(client, when):
    in_an_hour = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    params = {"now": {}, "delay_seconds": {"delay_seconds": 60}, "run_at": {"run_at": in_an_hour}}
    response = client.post("/tasks/add", json=ADD, params=params[when])
    assert response.status_code == 202, response.text
    assert set(response.json()) == {"job_id", "status_url"}


def test_a_replay_answers_with_the_job_not_a_new_decision_about_its_time(client):
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    key = {"Idempotency-Key": "past-1"}
    first = client.post("/tasks/add", json=ADD, params={"run_at": past}, headers=key)
    again = client.post("/tasks/add", json=ADD, params={"run_at": past}, headers=key)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["job_id"] == first.json()["job_id"]
    assert "detail" in first.json() and "detail" not in again.json()


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


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"delay_seconds": 10**9}, ["query", "delay_seconds"]),
        ({"run_at": "2099-01-01T00:00:00Z"}, ["query", "run_at"]),
    ],
)
def test_a_schedule_too_far_ahead_is_reported_at_the_parameter_that_asked_for_it(
    client, params, where
):
    response = client.post("/tasks/add", json=ADD, params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == where
