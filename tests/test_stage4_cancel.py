"""Stage 4: DELETE /jobs/{id} cancels a queued, deferred or running job."""

import asyncio
import threading
import time

import pytest

from tests.helpers import enqueue, poll, run_burst_worker, status

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
