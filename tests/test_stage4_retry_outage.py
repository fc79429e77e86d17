"""Stage 4: a retry when Redis fails. A retry Redis never got must not stand in for the next
click's, and a bulk retry that Redis fails halfway answers with what it made."""

import asyncio
import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from devkit.valkey import EmbeddedValkey
from tests.helpers import enqueue, job, run_burst_worker
from tests.slowlink import SlowLink

pytestmark = [pytest.mark.since_stage(4), pytest.mark.e2e]  # a Valkey of its own, to stop

HOLD_DEADLINE_S = 10.0


@pytest.fixture
def valkey(tmp_path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "valkey", persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def api_on(stage, monkeypatch, redis_url: str) -> TestClient:
    """The stage's API with its Redis at `redis_url` (the ledger stays the test's)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    stage.module("config").get_settings.cache_clear()
    return TestClient(stage.module("main").app)


def test_a_retry_redis_refused_does_not_stand_in_for_the_next_click(
    stage, settings_env, valkey, monkeypatch
):
    with api_on(stage, monkeypatch, valkey.url) as client:
        old = enqueue(client, "add", {"x": 1, "y": 2}, delay_seconds=60)
        assert client.delete(f"/jobs/{old}").status_code == 200

        valkey.stop()
        first = client.post(f"/jobs/{old}/retry")
        assert first.status_code == 503, first.text
        valkey.start()  # same port, empty data

        second = client.post(f"/jobs/{old}/retry")
        assert second.status_code == 202, second.text
        new_id = second.json()["job_id"]
        assert job(client, new_id)["status"] == "queued"
        assert job(client, old)["retried_by"] == new_id
        rows = client.get("/jobs", params={"function": "add"}).json()["jobs"]
        [unsent] = [row for row in rows if row["job_id"] not in (old, new_id)]
        assert (unsent["status"], unsent["retry_of"]) == ("failed", None)
        assert "not enqueued" in unsent["error"]

        asyncio.run(run_burst_worker(stage, valkey.url))
        assert job(client, new_id)["result"] == 3


# Once Redis is down, tests/slowlink.py's SlowLink drops the connections the API opens to it
# without closing them: a ResourceWarning of the test's proxy, not of the API.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_bulk_retry_that_redis_fails_halfway_answers_with_what_it_made(
    stage, settings_env, redis_url, drain, valkey, monkeypatch
):
    with api_on(stage, monkeypatch, redis_url) as client:  # three failed jobs in the ledger
        failed = [enqueue(client, "divide", {"x": n, "y": 0}) for n in range(3)]
        drain()
    with SlowLink(valkey.port) as link, api_on(stage, monkeypatch, link.url) as client:
        link.hold_at(b"MULTI")  # the first retry's enqueue
        answer: dict = {}
        bulk = threading.Thread(target=lambda: answer.update(r=client.post("/jobs/retry", json={})))
        bulk.start()
        assert link.held.wait(HOLD_DEADLINE_S)
        link.release()
        link.hold_at(b"MULTI")  # the second's: Redis goes away under it
        assert link.held.wait(HOLD_DEADLINE_S)
        valkey.stop()
        link.release()
        bulk.join(HOLD_DEADLINE_S)

    response = answer["r"]
    assert response.status_code == 202, response.text
    body = response.json()
    assert [made["retry_of"] for made in body["retried"]] == failed[-1:]  # newest first
    assert "Redis is unavailable" in body["stopped"]

    valkey.start()  # back, empty: the first retry went with the old data
    with api_on(stage, monkeypatch, valkey.url) as client:
        # The job it never got to is retried by the next bulk retry; the one whose enqueue
        # Redis failed (lost, or unconfirmed and so still linked), by its Retry button.
        again = client.post("/jobs/retry", json={}).json()["retried"]
        assert [made["retry_of"] for made in again] == failed[:1]
        clicked = client.post(f"/jobs/{failed[1]}/retry")
        assert clicked.status_code == 202, clicked.text
        asyncio.run(run_burst_worker(stage, valkey.url))
        for made in [*again, clicked.json()]:
            assert job(client, made["job_id"])["attempts"] == 1  # sent, and run (and failed)
