"""jobkit.logs in one process: the JSON line and the job it names, and an expected failure in
one line, with a real ARQ worker. (Both processes' lines: test_observe_processes.py.)"""

import asyncio
import json
import logging
import sys
from typing import Any

from jobkit import logs
from jobkit.logs import JsonFormatter, about_job
from tests.jobkit.arq_helpers import drain, pool


class NotThere(Exception):
    """An expected failure, as fetch's 404 is."""


def record(message: str, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord("app", logging.INFO, __file__, 1, message, None, exc_info)


def test_a_line_about_no_job_is_time_level_logger_and_message():
    line = json.loads(JsonFormatter().format(record("hello")))
    assert set(line) == {"time", "level", "logger", "message"}
    assert (line["level"], line["logger"], line["message"]) == ("INFO", "app", "hello")


def test_a_line_inside_about_job_names_the_job_and_a_failure_keeps_its_traceback():
    try:
        raise ValueError("bad")
    except ValueError:
        failure = sys.exc_info()
    with about_job("job-1", "add"):
        line = json.loads(JsonFormatter().format(record("enqueued", failure)))
    after = json.loads(JsonFormatter().format(record("later")))
    assert (line["job_id"], line["function"], line["try"], line["worker"]) == (
        "job-1", "add", None, None
    )  # fmt: skip
    assert "ValueError: bad" in line["exception"]
    assert "job_id" not in after


def test_json_logs_switch_every_handler_and_give_the_root_one_if_there_is_none(monkeypatch):
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(logging.Logger.manager, "loggerDict", {})
    logs.use_json_logs()
    (handler,) = logging.root.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    mine = logging.getLogger("tests.mine")
    monkeypatch.setattr(mine, "handlers", [logging.StreamHandler()])
    logs.use_json_logs()
    assert isinstance(mine.handlers[0].formatter, JsonFormatter)


async def gone(ctx: dict[str, Any]) -> None:
    raise NotThere("HTTP 404 from https://example.org/missing")


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    return x / y


def test_an_expected_failure_is_one_warning_line_and_others_keep_their_traceback(
    redis_url, caplog, monkeypatch
):
    monkeypatch.setattr(logs._expected, "types", ())  # as in a new process
    logs.expect_failures(NotThere)
    logs.expect_failures(NotThere)  # twice changes nothing

    async def main() -> None:
        async with pool(redis_url) as redis:
            await redis.enqueue_job("gone")
            await redis.enqueue_job("divide", 1, 0)
        await drain(redis_url, [gone, divide])

    with caplog.at_level(logging.INFO, logger="arq.worker"):
        asyncio.run(main())
    # ARQ's "failed" line: its second argument is "<job id>:<function>"
    failed = {str(r.args[1]).split(":")[1]: r for r in caplog.records  # type: ignore[index]
              if " failed, " in r.getMessage()}  # fmt: skip
    assert (failed["gone"].levelname, failed["gone"].exc_info) == ("WARNING", None)
    assert "NotThere: HTTP 404" in failed["gone"].getMessage()
    assert failed["divide"].levelname == "ERROR" and failed["divide"].exc_info is not None
    assert logging.getLogger("arq.worker").filters.count(logs._expected) == 1
