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
    if stage.number >= 4:  # the timeout the worker gives report, as ARQ registers it
        timeout = {f.name: f for f in worker.task_functions()}["report"].timeout_s
    else:
        timeout = worker.JOB_TIMEOUT_S
    assert 0 < longest < timeout
    steps = tasks.MAX_STEPS
    assert tasks.ReportArgs(steps=steps, step_seconds=longest / steps)  # accepted
    with pytest.raises(ValueError, match="timeout"):
        tasks.ReportArgs(steps=steps, step_seconds=longest / steps + 0.01)


# A job timeout that makes the largest crunch small, so that a worker's worth of them takes
# a few seconds of CPU here; the limit scales with it, so the test proves the same rule.
SMALL_JOB_TIMEOUT_S = 4.0


@pytest.mark.since_stage(2)
def test_as_many_of_the_largest_crunches_as_a_worker_runs_at_once_all_complete(
    stage, client, drain, monkeypatch
):
    # Crunches share one worker's core (its threads share the GIL) against a wall-clock
    # timeout: two 5-second crunches at once both timed out, so a valid job failed because
    # another client had sent one. The largest crunch accepted now leaves room for MAX_JOBS.
    monkeypatch.setenv("JOB_TIMEOUT_S", str(SMALL_JOB_TIMEOUT_S))
    stage.module("config").get_settings.cache_clear()
    tasks, worker = stage.module("tasks"), stage.module("worker")
    largest = tasks.crunch_max_ms()
    too_long = client.post("/tasks/crunch", json={"ms": largest + 1})
    assert too_long.status_code == 422, too_long.text
    assert "at once" in too_long.json()["detail"][0]["msg"]

    ids = [enqueue(client, "crunch", {"ms": largest}) for _ in range(worker.MAX_JOBS)]
    overrides = {"job_timeout": SMALL_JOB_TIMEOUT_S}  # the worker's, as JOB_TIMEOUT_S sets it
    if stage.number >= 4:  # each task's own timeout, capped by JOB_TIMEOUT_S
        overrides["functions"] = worker.task_functions()
    done = drain(**overrides)

    assert (done.jobs_complete, done.jobs_failed) == (worker.MAX_JOBS, 0)
    assert {job(client, job_id)["status"] for job_id in ids} == {"complete"}
