"""Stage 2's limitation, as a test: Redis keeps a result for an hour, then forgets the job."""

import pytest

pytestmark = [pytest.mark.since_stage(2), pytest.mark.until_stage(2)]


def test_the_result_expires_after_keep_result_and_then_the_job_is_unknown(
    stage, client, drain, raw_redis
):
    keep_result_s = stage.module("worker").KEEP_RESULT_S
    job_id = client.post("/tasks/add", json={"x": 5, "y": 10}).json()["job_id"]
    drain()
    ttl = raw_redis.ttl(f"arq:result:{job_id}")
    assert keep_result_s - 5 <= ttl <= keep_result_s
    assert client.get(f"/jobs/{job_id}").json()["status"] == "complete"

    raw_redis.delete(f"arq:result:{job_id}")  # what the TTL does an hour later

    assert client.get(f"/jobs/{job_id}").status_code == 404
