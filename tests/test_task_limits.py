"""Stage 2+: a task refuses up front what it could not finish, and says why it failed."""

import pytest

from tests.helpers import enqueue, job


@pytest.mark.since_stage(2)
def test_a_division_that_overflows_fails_saying_the_result_is_not_finite(client, drain):
    # 1e12 / 1e-300 is inf: JSON has no inf, and without a check ARQ could only store its
    # opaque "unable to serialize result".
    job_id = enqueue(client, "divide", {"x": 1e12, "y": 1e-300})
    drain()
    failed = job(client, job_id)
    assert failed["status"] == "failed"
    assert failed["error"] == "OverflowError: 1000000000000.0 / 1e-300 is not a finite number"


@pytest.mark.since_stage(3)
def test_a_report_longer_than_its_timeout_allows_is_a_422_up_front(client):
    response = client.post("/tasks/report", json={"steps": 100, "step_seconds": 2})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert "steps * step_seconds is 200 s" in error["msg"]
    assert "timeout" in error["msg"]


@pytest.mark.since_stage(3)
def test_the_longest_report_accepted_finishes_within_its_timeout(stage):
    tasks, worker = stage.module("tasks"), stage.module("worker")
    longest = tasks.report_max_s()
    timeout = worker.timeout_s("report") if stage.number >= 4 else worker.JOB_TIMEOUT_S
    assert 0 < longest < timeout
    steps = tasks.MAX_STEPS
    assert tasks.ReportArgs(steps=steps, step_seconds=longest / steps)  # accepted
    with pytest.raises(ValueError, match="timeout"):
        tasks.ReportArgs(steps=steps, step_seconds=longest / steps + 0.01)
