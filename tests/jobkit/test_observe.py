"""jobkit.observe in one process: with JSON logs and tracing on, the API's lines and the
worker's name the job and its trace; with everything off, FastAPI measures nothing."""

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobkit import observe
from jobkit.logs import JsonFormatter
from tests.jobkit.apps import QUEUE, make_app
from tests.jobkit.arq_helpers import drain


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


@pytest.fixture
def formatters_restored() -> Iterator[None]:
    """use_json_logs changes every handler's formatter: put them back after the test."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]
    before = [(handler, handler.formatter) for handler in handlers]
    yield
    for handler, formatter in before:
        handler.setFormatter(formatter)


def test_json_lines_name_the_job_and_its_trace_in_the_api_and_the_worker(
    redis_url, tmp_path, caplog, formatters_restored
):
    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    async def startup(ctx: dict[str, Any]) -> None:
        await observe.start_worker(
            ctx, QUEUE, tracing=f"file:{tmp_path / 'worker.jsonl'}", json_logs=True
        )

    keep = Keep(level=logging.INFO)
    logging.getLogger().addHandler(keep)
    try:
        with caplog.at_level(logging.INFO):
            app = make_app(redis_url, metrics=False, tracing=f"file:{tmp_path / 'api.jsonl'}",
                           json_logs=True)  # fmt: skip
            with TestClient(app) as client:
                job_id = client.post("/tasks/add", json={"x": 1, "y": 2}).json()["job_id"]
            asyncio.run(drain(redis_url, [add], on_startup=startup,
                              on_shutdown=observe.stop_worker))  # fmt: skip
    finally:
        logging.getLogger().removeHandler(keep)
    about = [line for line in lines if line.get("job_id") == job_id]
    (api,) = [line for line in about if line["logger"] == "tests.app"]
    worker = [line for line in about if line["logger"] == "arq.worker"]
    assert api["function"] == "add" and api["message"] == "enqueueing add"
    assert [line["try"] for line in worker] == [1, 1]  # "→ add(...)" and "← ... ● 3"
    assert {line["trace_id"] for line in [api, *worker]} == {api["trace_id"]}
    assert all(line["worker"] for line in worker)


def test_with_everything_off_fastapi_measures_and_traces_nothing(redis_url):
    observed = observe.Api(QUEUE, metrics=False)
    config = observed.telemetry()
    assert (config["metrics"], config["tracing"], config["logs"]) == (False, False, False)
    assert config["meter_provider"] is None and config["tracer_provider"] is None
    app = make_app(redis_url, metrics=False)
    with TestClient(app) as client:
        assert client.post("/tasks/add", json={"x": 1, "y": 2}).status_code == 202
    assert not app._native_telemetry.enabled()  # FastAPI's own switch: nothing to measure


def test_start_worker_called_outside_an_arq_worker_observes_nothing_and_says_so(caplog):
    # A script or a test may call a worker's start-up hook by hand: there is no Worker to
    # observe, and that is no error.
    caplog.set_level("INFO", logger="jobkit.observe")
    ctx: dict[str, object] = {}
    asyncio.run(observe.start_worker(ctx, "arq:queue"))
    assert "not started by an arq Worker" in caplog.text
    asyncio.run(observe.stop_worker(ctx))  # and stopping it is harmless
