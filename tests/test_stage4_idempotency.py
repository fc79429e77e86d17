"""Stage 4: the Idempotency-Key header."""

import pytest

pytestmark = pytest.mark.since_stage(4)


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
