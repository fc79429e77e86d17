"""Security claims, as tests that could fail.

- A pickle planted in Redis is never unpickled: jobs and results travel as JSON, so anyone
  who can write to Redis can at worst queue a job that fails, not run code in the worker.
- The embedded Valkey listens on loopback only.
(Bodies over the size limit get a JSON 413: tests/test_contract.py.)
"""

from __future__ import annotations

import pickle
from pathlib import Path

import psutil
import pytest
import redis

from devkit.valkey import EmbeddedValkey
from tests.helpers import poll
from tests.processes import Processes, stage_env


class Touch:
    """Unpickling this object creates `path`: what an attacker's payload does."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        # Any callable will do; `os.system` would too, but a Python call keeps the tests that
        # plant this (and would unpickle it, were the stages broken) free of processes.
        return (Path(self.path).touch, ())


def evil_payload(path) -> bytes:
    # ARQ's pickled job is a dict; the attacker's value runs its code as it is rebuilt.
    return pickle.dumps({"t": 1, "f": "add", "a": (), "k": {"x": Touch(str(path))}, "et": 1})


def test_the_planted_payload_is_live_when_unpickled(tmp_path):
    # The control: the payload below really does run code under pickle.loads.
    marker = tmp_path / "pickle-ran"
    pickle.loads(evil_payload(marker))  # what the worker would do with ARQ's default
    assert marker.exists()


@pytest.mark.since_stage(2)
@pytest.mark.e2e
def test_a_pickle_planted_in_redis_is_never_executed_and_the_worker_keeps_working(
    stage, client, raw_redis, redis_url, tmp_path
):
    marker = tmp_path / "pwned"
    # Planted over a job the API made (from stage 3 the job routes serve only jobs on record,
    # so a job planted under an id of its own is a 404 there, never read at all).
    evil_id = client.post("/tasks/add", json={"x": 1, "y": 1}).json()["job_id"]
    raw_redis.set(f"arq:job:{evil_id}", evil_payload(marker))
    with Processes(tmp_path / "logs") as procs:
        worker = procs.worker(stage, stage_env(redis_url, tmp_path / "data"))
        # Until the worker has failed it, the API answers 502 (not JSON in Redis): keep polling.
        poll(
            lambda: client.get(f"/jobs/{evil_id}").json().get("status") == "failed",
            20,
            "the planted job",
        )
        evil = client.get(f"/jobs/{evil_id}").json()
        assert "Deserializ" in evil["error"], evil

        job_id = client.post("/tasks/add", json={"x": 2, "y": 3}).json()["job_id"]
        done = poll(
            lambda: (job := client.get(f"/jobs/{job_id}").json())["status"] == "complete" and job,
            20,
            "a normal job after the planted one",
        )
        assert done["result"] == 5
        assert worker.running()
    assert f"deserializing job {evil_id} failed" in worker.output()
    assert not marker.exists(), "the worker unpickled the planted payload"


@pytest.mark.since_stage(2)
@pytest.mark.parametrize("key", ["arq:job:{}", "arq:result:{}"])
@pytest.mark.parametrize("payload", ["pickle", "garbage"])
def test_a_job_whose_data_in_redis_is_not_json_is_a_json_502_and_never_unpickled(
    client, raw_redis, tmp_path, key, payload
):
    # Found while planting the pickle: GET /jobs/{id} answered a 500 with a traceback.
    marker = tmp_path / "pwned"
    planted = client.post("/tasks/add", json={"x": 1, "y": 1}).json()["job_id"]  # on record
    raw_redis.set(key.format(planted), evil_payload(marker) if payload == "pickle" else b"\x80{")
    response = client.get(f"/jobs/{planted}")
    assert response.status_code == 502
    assert "not JSON" in response.json()["detail"]
    assert not marker.exists()


@pytest.mark.e2e  # a Valkey of its own
def test_the_embedded_valkey_listens_on_loopback_only(tmp_path):
    with EmbeddedValkey(tmp_path / "valkey", persist=True) as server:
        client = redis.Redis.from_url(server.url)
        try:
            assert client.config_get("bind")["bind"] == "127.0.0.1"
            assert client.config_get("protected-mode")["protected-mode"] == "yes"
        finally:
            client.close()
        listening = [
            conn.laddr
            for conn in psutil.Process(server.process.pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
    assert listening, "found no listening socket"
    assert {address.ip for address in listening} == {"127.0.0.1"}, listening
