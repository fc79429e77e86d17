"""Stage 4: the history (`GET /jobs`) shows each job's attempts, as `GET /jobs/{id}` does."""

import pytest

from tests.helpers import enqueue, job

pytestmark = pytest.mark.since_stage(4)


def test_the_list_shows_each_jobs_attempt_log_not_an_empty_one(client, drain):
    ran = [enqueue(client, "add", {"x": n, "y": 1}) for n in range(3)]
    failed = enqueue(client, "divide", {"x": 1, "y": 0})
    drain()
    waiting = enqueue(client, "add", {"x": 1, "y": 1})  # no worker has tried it yet

    listed = {row["job_id"]: row["attempt_log"] for row in client.get("/jobs").json()["jobs"]}

    assert listed == {job_id: job(client, job_id)["attempt_log"] for job_id in listed}
    assert [[a["outcome"] for a in listed[job_id]] for job_id in ran] == [["complete"]] * 3
    [attempt] = listed[failed]
    assert (attempt["attempt"], attempt["outcome"]) == (1, "failed")
    assert attempt["error"] == "ZeroDivisionError: float division by zero"
    assert listed[waiting] == []
