"""Stage 2+: a job id to follow, a worker that runs the job, and an honest status."""

import json

import pytest

from tests.helpers import enqueue, enqueue_behind_the_apis_back

pytestmark = pytest.mark.since_stage(2)


def test_add_is_queued_then_complete_with_its_result(client, drain):
    job_id = enqueue(client, "add", {"x": 5, "y": 10})
    queued = client.get(f"/jobs/{job_id}").json()
    assert queued["status"] == "queued"
    assert queued["function"] == "add"
    assert queued["args"] == {"x": 5, "y": 10}
    assert queued["attempts"] == 0
    assert queued["result"] is None

    drain()

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete"
    assert job["result"] == 15
    assert job["error"] is None
    assert job["attempts"] == 1
    assert job["enqueue_time"] <= job["start_time"] <= job["finish_time"]


def test_a_failed_job_reports_failed_not_complete_with_the_error(client, drain):
    job_id = enqueue(client, "divide", {"x": 1, "y": 0})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert job["error"] == "ZeroDivisionError: float division by zero"
    assert job["result"] is None


@pytest.mark.parametrize(
    ("task", "body", "result"),
    [
        ("divide", {"x": 1, "y": 4}, 0.25),
        ("crunch", {"ms": 5}, None),
        ("wait", {"seconds": 0.01}, 0.01),
    ],
)
def test_every_task_runs_to_complete(client, drain, task, body, result):
    job_id = enqueue(client, task, body)
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    if result is not None:
        assert job["result"] == result
    else:
        assert job["result"] > 0  # crunch returns how many loops it managed


def test_an_unknown_job_is_a_404_with_a_json_body(client):
    response = client.get("/jobs/does-not-exist")
    assert response.status_code == 404
    assert "does-not-exist" in response.json()["detail"]


def test_an_overlong_job_id_is_a_422_not_a_redis_lookup(client):
    assert client.get("/jobs/" + "a" * 500).status_code == 422


def test_job_and_result_travel_through_redis_as_json_not_pickle(client, drain, raw_redis):
    job_id = enqueue(client, "add", {"x": 5, "y": 10})
    payload = json.loads(raw_redis.get(f"arq:job:{job_id}"))
    assert payload["f"] == "add"
    assert payload["k"] == {"x": 5, "y": 10}
    drain()
    result = json.loads(raw_redis.get(f"arq:result:{job_id}"))
    assert result["r"] == 15
    assert result["s"] is True


def test_a_failure_is_stored_as_json_with_the_error_text(client, drain, raw_redis):
    job_id = enqueue(client, "divide", {"x": 1, "y": 0})
    drain()
    result = json.loads(raw_redis.get(f"arq:result:{job_id}"))
    assert result["s"] is False
    assert result["r"] == {"error": "ZeroDivisionError: float division by zero"}


def test_a_rejected_body_enqueues_nothing(client, raw_redis):
    response = client.post("/tasks/add", json={"x": "5", "y": 10})
    assert response.status_code == 422
    assert raw_redis.zcard("arq:queue") == 0
    assert raw_redis.keys("arq:job:*") == []


def test_a_job_in_progress_reports_in_progress_with_its_attempt(client, raw_redis):
    # Claim the job the way a worker does (ARQ's in-progress key and try counter).
    job_id = enqueue(client, "wait", {"seconds": 1})
    raw_redis.set(f"arq:in-progress:{job_id}", b"1")
    raw_redis.incr(f"arq:retry:{job_id}")
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "in_progress"
    assert job["attempts"] == 1


def test_a_job_that_finishes_between_two_redis_reads_is_not_reported_unknown(
    stage, client, drain, redis_url, monkeypatch
):
    # Found by the load test's checker: status() saw the job, then the worker replaced the
    # queued job with its result before info() read them, and GET answered 404.
    import asyncio

    from arq.connections import ArqRedis
    from arq.jobs import Job

    jobs = stage.module("jobs")
    job_id = enqueue(client, "add", {"x": 5, "y": 10})
    drain()
    real_info, missed = Job.info, []

    async def info_that_misses_once(self):
        if not missed:
            missed.append(True)
            return None  # what info() returns when it reads in between
        return await real_info(self)

    async def read():
        redis = ArqRedis.from_url(redis_url)
        try:
            return await jobs.read_from_redis(redis, job_id, "arq:queue")
        finally:
            await redis.aclose()

    monkeypatch.setattr(Job, "info", info_that_misses_once)
    view = asyncio.run(read())
    assert missed, "the interleaving was not exercised"
    assert view is not None
    assert view.status == "complete"
    assert view.result == 15


@pytest.mark.since_stage(3)
def test_a_job_not_on_record_is_unknown_to_the_job_routes(stage, client, redis_url, raw_redis):
    # From stage 3 the ledger is the record: Redis also holds jobs this API never made (ARQ's
    # cron runs, another program's jobs), which were served from Redis to anyone who asked.
    assert enqueue_behind_the_apis_back(stage, redis_url, "add", "not-on-record", x=1, y=2)
    assert client.get("/jobs/not-on-record").status_code == 404
    assert client.get("/jobs/not-on-record/events").status_code == 404
    if stage.number >= 4:
        assert client.delete("/jobs/not-on-record").status_code == 404
    assert "not-on-record" in client.get("/jobs/not-on-record").json()["detail"]
    assert raw_redis.zscore("arq:queue", "not-on-record") is not None  # left alone
