"""Stage 4: the Idempotency-Key header."""

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import jobkit.db
from tests.helpers import job, poll, status
from tests.processes import Processes, free_port, stage_env

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


# Regression tests: the key points at a job only once the job exists.

DEADLINE_S = 30.0  # generous: the machine is shared
ADD = {"x": 1, "y": 2}


@contextmanager
def sqlite_write_lock(stage: Any, database: Path | None = None) -> Iterator[None]:
    """Hold the ledger file's write lock from another connection, as a long transaction would."""
    database = database or sa.make_url(stage.module("config").get_settings().database_url).database
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextmanager
def client_waiting_for_locks(stage, app, monkeypatch, busy_timeout_ms: int) -> Iterator[Any]:
    """A client whose ledger waits `busy_timeout_ms` for a locked SQLite file, then fails."""
    monkeypatch.setattr(jobkit.db, "BUSY_TIMEOUT_MS", busy_timeout_ms)
    with TestClient(app) as client:
        yield client


def test_a_request_that_failed_after_claiming_its_key_frees_it_for_the_retry(
    stage, app, drain, monkeypatch
):
    headers = {"Idempotency-Key": "order-44"}
    with client_waiting_for_locks(stage, app, monkeypatch, busy_timeout_ms=200) as client:
        with sqlite_write_lock(stage):
            failed = client.post("/tasks/add", json=ADD, headers=headers)
        assert failed.status_code == 503, failed.text
        retry = client.post("/tasks/add", json=ADD, headers=headers)
        assert retry.status_code == 202, retry.text
        assert "idempotent-replayed" not in retry.headers  # a new job, not the failed one
        job_id = retry.json()["job_id"]
        assert client.get(f"/jobs/{job_id}").status_code == 200
        drain()
        done = job(client, job_id)
        assert (done["status"], done["result"]) == ("complete", 3)


def test_a_duplicate_while_the_first_request_is_in_flight_is_a_409_in_progress(
    stage, app, drain, raw_redis, monkeypatch
):
    headers = {"Idempotency-Key": "order-45"}
    with client_waiting_for_locks(stage, app, monkeypatch, busy_timeout_ms=30_000) as client:
        with ThreadPoolExecutor(1) as pool:
            with sqlite_write_lock(stage):  # the first request waits for the ledger meanwhile
                first = pool.submit(client.post, "/tasks/add", json=ADD, headers=headers)
                poll(lambda: raw_redis.exists("idempotency:order-45"), DEADLINE_S, "the claim")
                second = client.post("/tasks/add", json=ADD, headers=headers)
                assert second.status_code == 409, second.text
                assert "in progress" in second.json()["detail"]
                assert "job_id" not in second.json()
                # In flight, the claim lives briefly: a crashed API would not block the key.
                claim_ttl_s = stage.module("config").get_settings().idempotency_claim_ttl_s
                assert 0 < raw_redis.ttl("idempotency:order-45") <= claim_ttl_s
            first = first.result(timeout=DEADLINE_S)
        assert first.status_code == 202, first.text
        third = client.post("/tasks/add", json=ADD, headers=headers)
        assert third.status_code == 202, third.text
        assert third.json()["job_id"] == first.json()["job_id"]
        assert third.headers["idempotent-replayed"] == "true"
        drain()
        assert status(client, first.json()["job_id"]) == "complete"
    assert raw_redis.ttl("idempotency:order-45") > claim_ttl_s  # confirmed: the full window


@pytest.mark.parametrize("key", ["", "   ", "\t"])
def test_an_empty_or_blank_idempotency_key_is_a_422(client, raw_redis, key):
    response = client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": key})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]
    assert raw_redis.zcard("arq:queue") == 0
    assert not raw_redis.keys("idempotency:*")


@pytest.mark.parametrize("length", [201, 5000])
def test_an_idempotency_key_over_the_length_limit_is_a_422_that_counts_characters(
    client, raw_redis, length
):
    response = client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": "k" * length})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["header", "idempotency-key"]
    assert error["msg"] == "String should have at most 200 characters", error
    assert raw_redis.zcard("arq:queue") == 0
    enqueued = client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": "k" * 200})
    assert enqueued.status_code == 202, enqueued.text


def test_unicode_and_odd_idempotency_keys_each_name_their_own_job(client, raw_redis):
    # HTTP headers are bytes; a key is whatever bytes the client sent, matched exactly.
    keys = ["ключ-🔑".encode(), "ключ-🗝".encode(), b"*", b"idempotency:*", b"a b"]
    first = [client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": k}) for k in keys]
    again = [client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": k}) for k in keys]
    assert [r.status_code for r in first + again] == [202] * 2 * len(keys)
    ids = [r.json()["job_id"] for r in first]
    assert len(set(ids)) == len(keys)
    assert [r.json()["job_id"] for r in again] == ids
    assert raw_redis.zcard("arq:queue") == len(keys)


def test_the_in_progress_409_is_declared_with_a_json_body(client):
    paths = client.get("/openapi.json").json()["paths"]
    conflict = paths["/tasks/add"]["post"]["responses"]["409"]
    assert "in progress" in conflict["description"]
    assert "application/json" in conflict["content"]


@pytest.mark.e2e  # a real API process, killed
def test_a_key_a_crashed_api_left_claimed_frees_itself_soon_not_after_a_day(
    stage, redis_url, raw_redis, tmp_path
):
    claim_ttl_s = 2
    data = tmp_path / "data"
    port, env = free_port(), stage_env(redis_url, data, IDEMPOTENCY_CLAIM_TTL_S=str(claim_ttl_s))
    url, headers = f"http://127.0.0.1:{port}", {"Idempotency-Key": "order-46"}
    with Processes(tmp_path / "logs") as procs, ThreadPoolExecutor(1) as pool:
        crashed = procs.api(stage, port, env)
        with sqlite_write_lock(stage, data / "jobs.db"):  # holds the request after its claim
            pool.submit(httpx.post, f"{url}/tasks/add", json=ADD, headers=headers, timeout=60)
            poll(lambda: raw_redis.exists("idempotency:order-46"), DEADLINE_S, "the claim")
            crashed.kill()
        procs.api(stage, port, env)

        def answered() -> httpx.Response | None:
            response = httpx.post(f"{url}/tasks/add", json=ADD, headers=headers, timeout=30)
            return None if response.status_code == 409 else response  # 409: still claimed

        retry = poll(answered, DEADLINE_S, "the claim to expire", every_s=0.5)
        assert retry.status_code == 202, retry.text
        assert "idempotent-replayed" not in retry.headers
        assert httpx.get(f"{url}/jobs/{retry.json()['job_id']}").status_code == 200


def test_a_key_the_previous_release_stored_replays_its_job_and_is_never_a_500(
    stage, client, raw_redis
):
    # The previous release stored {job_id, fingerprint}, with no "done", as it created the
    # job, and replayed that job to a retry. Embedded Valkey keeps such keys across an
    # upgrade for their 24 h: reading one raised KeyError, a 500.
    idempotency = stage.module("idempotency")
    earlier = client.post("/tasks/add", json=ADD).json()["job_id"]
    schedule = {"run_at": None, "delay_seconds": None}
    fingerprint = idempotency.request_fingerprint("add", ADD, schedule)
    raw_redis.set("idempotency:old", json.dumps({"job_id": earlier, "fingerprint": fingerprint}))
    raw_redis.set("idempotency:unreadable", b"\x80 not json")

    replay = client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": "old"})
    other = client.post("/tasks/add", json={"x": 9, "y": 9}, headers={"Idempotency-Key": "old"})
    unreadable = client.post("/tasks/add", json=ADD, headers={"Idempotency-Key": "unreadable"})

    assert replay.status_code == 202, replay.text
    assert replay.json()["job_id"] == earlier
    assert replay.headers["idempotent-replayed"] == "true"
    assert other.status_code == 409 and "different request" in other.json()["detail"]
    assert unreadable.status_code == 409, unreadable.text  # never replays a job it can't read
    assert "different request" in unreadable.json()["detail"]
    assert raw_redis.zcard("arq:queue") == 1
