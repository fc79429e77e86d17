"""Stage 2+: with Redis down the API answers 503 quickly, and recovers by itself."""

import time

import pytest
from fastapi.testclient import TestClient

from devkit.valkey import EmbeddedValkey
from tests.helpers import enqueue

pytestmark = [pytest.mark.since_stage(2), pytest.mark.e2e]  # a Valkey of its own, to stop

# A guard against hanging, not a benchmark: the API's Redis timeout is 1 s, and a laptop
# with both cores busy may take a few more.
HANG_GUARD_S = 5.0


def test_redis_down_gives_a_fast_503_then_the_api_recovers_without_a_restart(
    stage, settings_env, tmp_path, monkeypatch
):
    server = EmbeddedValkey(tmp_path / "valkey", persist=False)
    server.start()
    monkeypatch.setenv("REDIS_URL", server.url)
    stage.module("config").get_settings.cache_clear()
    try:
        with TestClient(stage.module("main").app) as client:
            job_id = enqueue(client, "add", {"x": 1, "y": 2})

            server.stop()
            for method, path, body in [
                ("POST", "/tasks/add", {"x": 1, "y": 2}),
                # A job still queued: its live status is Redis's. (From stage 3 an unknown id
                # is a 404 from the ledger alone: only jobs on record are served.)
                ("GET", f"/jobs/{job_id}", None),
                ("GET", "/health", None),
            ]:
                started = time.monotonic()
                response = client.request(method, path, json=body)
                assert time.monotonic() - started < HANG_GUARD_S
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"] == "application/json"
            assert "redis" in client.get("/health").json()["down"]

            server.start()  # same port, empty data
            assert client.get("/health").status_code == 200
            assert client.post("/tasks/add", json={"x": 1, "y": 2}).status_code == 202
    finally:
        server.stop()
