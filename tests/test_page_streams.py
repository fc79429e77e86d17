"""Stage 3+: the jobs pages' event streams (GET /events) have places of their own, so a
hundred open pages cannot take every place GET /jobs/{id}/events needs (jobkit.streams)."""

import contextlib

import httpx
import pytest

import jobkit.streams
from tests.liveserver import serving
from tests.test_streams import ADD, watch

pytestmark = pytest.mark.since_stage(3)


def test_open_jobs_pages_leave_a_jobs_event_stream_its_place(app, monkeypatch):
    monkeypatch.setattr(jobkit.streams, "MAX_STREAMS", 1)
    monkeypatch.setattr(jobkit.streams, "MAX_PAGE_STREAMS", 2)
    with serving(app) as url, contextlib.ExitStack() as stack:
        job_id = httpx.post(f"{url}/tasks/add", json=ADD).json()["job_id"]
        client = stack.enter_context(httpx.Client())
        pages = [watch(stack, client, f"{url}/events") for _ in range(2)]
        job = watch(stack, client, f"{url}/jobs/{job_id}/events")  # the server's one place
        one_page_too_many = watch(stack, client, f"{url}/events")
        refused = one_page_too_many.read()

    assert [page.status_code for page in pages] == [200, 200]
    assert job.status_code == 200
    assert one_page_too_many.status_code == 429
    assert "2 jobs pages' event streams are open" in refused.decode()
