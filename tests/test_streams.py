"""Stage 3+: event streams (GET /jobs/{id}/events, and the jobs page's GET /events) are
bounded in number, per client and in all, and every watcher of one job (every open page) is
fed by one poll of it.

Six hundred idle watchers of one job used to poll it six hundred times over: every other
request slowed down, and the Redis pool grew a connection per watcher. These tests hold
streams open against a real uvicorn (tests/liveserver.py) in this process, so they can count
what the app reads.
"""

import asyncio
import contextlib
import json

import httpx
import pytest

import jobkit.dashboard
import jobkit.streams
from tests.helpers import poll
from tests.liveserver import serving

pytestmark = pytest.mark.since_stage(3)

ADD = {"x": 1, "y": 2}  # queued, and no worker until the test runs one: its streams stay open
WATCHERS = 5
DEADLINE_S = 30.0


def watch(stack: contextlib.ExitStack, client: httpx.Client, url: str) -> httpx.Response:
    """GET `url` as a stream, open until `stack` closes: the response, once its headers came."""
    return stack.enter_context(client.stream("GET", url, timeout=DEADLINE_S))


def events(stream: httpx.Response) -> list[dict]:
    """Every event of a stream, read until the server ends it."""
    lines = stream.iter_lines()
    return [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]


def test_event_streams_are_capped_per_client_and_in_all_with_a_json_429(stage, app, monkeypatch):
    streams = jobkit.streams
    monkeypatch.setattr(streams, "MAX_STREAMS_PER_CLIENT", 2)
    monkeypatch.setattr(streams, "MAX_STREAMS", 3)
    with serving(app) as url, contextlib.ExitStack() as stack:
        job_id = httpx.post(f"{url}/tasks/add", json=ADD).json()["job_id"]
        path = f"{url}/jobs/{job_id}/events"

        def client_at(address: str) -> httpx.Client:  # a client from another loopback address
            transport = httpx.HTTPTransport(local_address=address)
            return stack.enter_context(httpx.Client(transport=transport))

        first, second, third = (client_at(f"127.0.0.{n}") for n in (1, 2, 3))
        opened = [watch(stack, first, path), watch(stack, first, path)]
        over_its_share = watch(stack, first, path)
        opened.append(watch(stack, second, path))  # another client still gets one...
        over_the_total = watch(stack, third, path)  # ...until the server has MAX_STREAMS open
        refused = {  # the body of a refusal; an open stream's would not end
            why: stream.read() if stream.status_code != 200 else b"(a stream)"
            for why, stream in [("client", over_its_share), ("total", over_the_total)]
        }
        opened[0].close()  # the client goes away: its place is free again

        def reopened() -> bool:
            with first.stream("GET", path, timeout=DEADLINE_S) as again:
                return again.status_code == 200

        poll(reopened, DEADLINE_S, "the closed stream's place to be freed")

    assert [stream.status_code for stream in opened] == [200, 200, 200]
    for stream, why in [(over_its_share, "client"), (over_the_total, "total")]:
        assert stream.status_code == 429, refused[why]
        assert stream.headers["content-type"] == "application/json"
        assert int(stream.headers["retry-after"]) > 0
    assert "this client has 2 event streams open" in json.loads(refused["client"])["detail"]
    assert "3 event streams are open" in json.loads(refused["total"])["detail"]


def test_the_watchers_of_one_job_share_one_poll_of_it(app, drain, monkeypatch):
    with serving(app) as url, contextlib.ExitStack() as stack:
        job_id = httpx.post(f"{url}/tasks/add", json=ADD).json()["job_id"]
        ledger, readers = app.state.ledger, []  # readers: the asyncio task behind each read
        read = ledger.get

        async def counted(wanted: str):
            if wanted == job_id:
                readers.append(asyncio.current_task())
            return await read(wanted)

        monkeypatch.setattr(ledger, "get", counted)
        client = stack.enter_context(httpx.Client())
        streams = [watch(stack, client, f"{url}/jobs/{job_id}/events") for _ in range(WATCHERS)]
        opened = len(readers)  # each stream's own first read, before its first event
        polls = 2 * WATCHERS
        poll(lambda: len(readers) >= opened + polls, DEADLINE_S, f"{polls} polls of the job")
        polling = set(readers[opened:])
        drain()  # the job runs: every watcher hears of it
        last = [events(stream)[-1] for stream in streams]

    assert len(polling) == 1, f"{len(polling)} tasks polled the job for {WATCHERS} watchers"
    assert [(event["status"], event["result"]) for event in last] == [("complete", 3)] * WATCHERS


def test_every_open_jobs_page_is_fed_by_one_read_and_hears_of_a_new_job(app, drain, monkeypatch):
    monkeypatch.setattr(jobkit.dashboard, "FEED_POLL_S", 0.1)  # the test's polls come sooner
    with serving(app) as url, contextlib.ExitStack() as stack:
        ledger, readers = app.state.ledger, []  # the asyncio task behind each read
        read = ledger.page

        async def counted(newest, also):
            readers.append(asyncio.current_task())
            return await read(newest, also)

        monkeypatch.setattr(ledger, "page", counted)
        client = stack.enter_context(httpx.Client())
        pages = [watch(stack, client, f"{url}/events") for _ in range(WATCHERS)]
        opened = len(readers)  # each page's own first read
        polls = 2 * WATCHERS
        poll(lambda: len(readers) >= opened + polls, DEADLINE_S, f"{polls} reads of the state")
        polling = set(readers[opened:])
        job_id = httpx.post(f"{url}/tasks/add", json=ADD).json()["job_id"]
        drain()
        heard = []
        for page in pages:
            for line in page.iter_lines():
                if line.startswith("data: "):
                    state = json.loads(line[len("data: ") :])
                    if state["counts"].get("complete"):
                        heard.append(state)
                        break

    assert len(polling) == 1, f"{len(polling)} tasks read the state for {WATCHERS} pages"
    assert len(heard) == WATCHERS
    for state in heard:
        assert {job["job_id"]: job["status"] for job in state["jobs"]} == {job_id: "complete"}
        assert state["queue"]["ready"] == 0


def test_the_jobs_pages_streams_are_capped_like_a_jobs(app, monkeypatch):
    monkeypatch.setattr(jobkit.streams, "MAX_STREAMS_PER_CLIENT", 1)
    with serving(app) as url, contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client())
        first = watch(stack, client, f"{url}/events")
        second = watch(stack, client, f"{url}/events")  # a second tab from the same client
        refused = second.read()
    assert first.status_code == 200
    assert second.status_code == 429
    assert "this client has 1 event streams open" in json.loads(refused)["detail"]
