"""Log lines that say which job they are about, and expected job failures in one line.

- `use_json_logs()`: every handler already set up (uvicorn's, ARQ's, the root logger's) writes
  one JSON object a line: time, level, logger, message; for a line about a job also `job_id`,
  `function`, `try` and `worker`; and `trace_id` and `span_id` when tracing is on. In the
  worker, a line is about a job when ARQ or the job writes it during the job's pick-up
  (jobkit.worker_events); in the API, when it is written inside `about_job(...)` (the
  enqueue, in jobkit.observe). Off by default: the console output stays as readable as it was.
  A log collector (Loki, CloudWatch, ...) can then find every line of one job, or of one trace.
- `expect_failures(*types)`: a job that ends with one of these exceptions, an outcome the task
  expects (fetch's 404: asking again won't help), is logged by ARQ in one line at WARNING,
  rather than at ERROR with a traceback, which is for what nobody expected.

A learner may skip this module: a setting turns JSON logs on, and stage 4 names its expected
failures once.
"""

import contextlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from jobkit.worker_events import current

_api_job: ContextVar[dict[str, Any] | None] = ContextVar("jobkit_log_job", default=None)


@contextlib.contextmanager
def about_job(job_id: str, function: str) -> Iterator[None]:
    """Lines written inside this block (in the API) carry the job's id and function."""
    token = _api_job.set({"job_id": job_id, "function": function, "try": None, "worker": None})
    try:
        yield
    finally:
        _api_job.reset(token)


def job_fields() -> dict[str, Any]:
    """The job the current line is about ({} if none): job_id, function, try, worker, and the
    trace it belongs to when tracing is on."""
    fields = dict(_api_job.get() or {})
    pickup = current()
    if pickup is not None:
        fields = {
            "job_id": pickup.job_id,
            "function": pickup.function,
            "try": pickup.job_try,
            "worker": pickup.worker_id,
        }
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = trace.format_trace_id(span.trace_id)
        fields["span_id"] = trace.format_span_id(span.span_id)
    elif pickup is not None and "trace_id" in pickup.extra:  # ARQ's lines after the try
        fields["trace_id"] = pickup.extra["trace_id"]
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line, with the job the line is about."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= job_fields()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_json_logs() -> None:
    """Switch every handler set up so far to JSON lines (call it once logging is configured:
    in the API at import, as uvicorn has configured its loggers; in the worker, on startup)."""
    formatter = JsonFormatter()
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for lg in loggers if isinstance(lg, logging.Logger) for h in lg.handlers]
    if not handlers:  # nothing set up yet: the root logger gets one
        handlers = [logging.StreamHandler()]
        logging.getLogger().addHandler(handlers[0])
    for handler in handlers:
        handler.setFormatter(formatter)


class ExpectedFailures(logging.Filter):
    """On ARQ's worker logger: a failure with an expected exception loses its traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.types: tuple[type[BaseException], ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.types):
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
        return True


_expected = ExpectedFailures()


def expect_failures(*types: type[BaseException]) -> None:
    """Jobs ending with these exceptions are logged in one line (ARQ's 'failed' line)."""
    _expected.types = tuple(dict.fromkeys((*_expected.types, *types)))
    arq_worker = logging.getLogger("arq.worker")
    if _expected not in arq_worker.filters:
        arq_worker.addFilter(_expected)
