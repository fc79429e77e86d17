"""Stage 1's lesson, as tests: the work runs after the response, and nothing can be looked up."""

import asyncio
import json
import logging

import pytest

pytestmark = pytest.mark.until_stage(1)


def call_asgi(app, path: str, body: dict, events: list[str]) -> list[str]:
    """POST straight into the ASGI app, recording in `events` what happened, in order."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("test", 80), "client": ("test", 1),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": payload, "more_body": False}]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            events.append(f"status {message['status']}")
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            events.append("response sent")

    class Recorder(logging.Handler):
        def emit(self, record):
            events.append(f"log: {record.getMessage()}")

    handler, logger = Recorder(), logging.getLogger("tasks")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        asyncio.run(app(scope, receive, send))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return events


def test_the_task_runs_after_the_response_is_sent(app):
    events = call_asgi(app, "/tasks/add", {"x": 5, "y": 10}, [])
    assert events == ["status 202", "response sent", "log: add(5, 10) = 15"]


def test_a_def_task_also_runs_after_the_response(app):
    events = call_asgi(app, "/tasks/crunch_sync", {"ms": 1}, [])
    assert events[:2] == ["status 202", "response sent"]
    assert events[2].startswith("log: crunch_sync(1 ms) done in a worker thread")


def test_the_answer_has_no_job_id_to_follow(client):
    body = client.post("/tasks/add", json={"x": 5, "y": 10}).json()
    assert body["task"] == "add"
    assert "job_id" not in body
    assert "location" not in {name.lower() for name in body}


def test_there_is_no_jobs_route(client):
    assert client.get("/jobs/anything").status_code == 404
    assert not [path for path in client.get("/openapi.json").json()["paths"] if "jobs" in path]


def test_a_failing_task_is_answered_202_and_the_client_never_hears_of_the_error(app):
    events: list[str] = []
    with pytest.raises(ZeroDivisionError):  # raised in the server, after the answer went out
        call_asgi(app, "/tasks/divide", {"x": 1, "y": 0}, events)
    assert events == ["status 202", "response sent"]
