"""Stage 4: per-task timeouts."""

import time

import pytest

from tests.helpers import enqueue

pytestmark = pytest.mark.since_stage(4)


def test_a_job_over_its_timeout_fails_with_a_clear_reason(stage, client, drain, monkeypatch):
    worker = stage.module("worker")  # first: its WorkerSettings keep the real timeouts
    monkeypatch.setattr(stage.module("tasks").WaitArgs, "TIMEOUT_S", 0.2)
    job_id = enqueue(client, "wait", {"seconds": 5})
    started = time.monotonic()
    drain(functions=worker.task_functions())
    job = client.get(f"/jobs/{job_id}").json()
    assert time.monotonic() - started < 3
    assert job["status"] == "failed"
    assert "TimeoutError" in job["error"]
    assert job["attempts"] == 1  # not retried
