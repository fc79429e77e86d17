"""How a job travels through Redis (JSON, never pickle) and how we report its state."""

import asyncio
import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.jobs import Job, JobResult, JobStatus
from pydantic import BaseModel, Field

# --8<-- [start:keep_result]
# How long a result stays in Redis (the worker's keep_result, and a cancel's result). After
# that GET /jobs/{id} answers from the ledger: Redis is a queue, not a record.
KEEP_RESULT_S = 3600
# --8<-- [end:keep_result]

# ARQ pickles jobs and results by default, and unpickling runs code: anyone who can write
# to Redis could then run commands in the worker and in this API. JSON carries only data.
# It has no exceptions, so a failed job's exception is stored as {"error": "Type: message"},
# and a cancel's with "status": "cancelled", decided here, once, as the result is stored.


class CancelledBeforeItRan(asyncio.CancelledError):
    """A cancel that took the job off the queue (cancel.py): no try of it ran for this."""


def _encode_exception(value: object) -> dict[str, Any]:
    if not isinstance(value, BaseException):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    if isinstance(value, asyncio.CancelledError):
        # Stored only for a cancel (DELETE): a shutdown's cancellation puts the job back in
        # the queue, and stores nothing.
        why = str(value) or "cancelled while running (DELETE /jobs/{id})"
        ran = not isinstance(value, CancelledBeforeItRan)
        return {"error": f"CancelledError: {why}", "status": Status.CANCELLED, "ran": ran}
    if isinstance(value, TimeoutError) and not str(value):
        return {"error": "TimeoutError: the job ran longer than its timeout and was stopped"}
    message = str(value)
    return {"error": f"{type(value).__name__}: {message}" if message else type(value).__name__}


def serialize(data: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN or inf result would be invalid JSON for every client after us.
    return json.dumps(data, default=_encode_exception, allow_nan=False).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    return json.loads(data)


# --8<-- [start:job_view]
class Status(StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"  # queued, to run at a later time: scheduled, or waiting to retry
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    FAILED = "failed"  # ARQ calls this "complete" too; outcome() tells them apart
    CANCELLED = "cancelled"


FINAL = frozenset({Status.COMPLETE, Status.FAILED, Status.CANCELLED})  # will not change any more
UNFINISHED = frozenset(Status) - FINAL
# Why DELETE took a job off the queue (cancel.py): it ended between tries, not in one.
NOT_RUN = "cancelled before it ran"
BETWEEN_TRIES = "cancelled while waiting for its next try"
LOST_IN_REDIS = "cancelled; Redis no longer had this job"  # flushed, or restarted without it


class Attempt(BaseModel):
    attempt: int
    outcome: str
    error: str | None = None
    start_time: datetime | None = None
    finish_time: datetime | None = None
    next_try_at: datetime | None = None


class JobView(BaseModel):
    job_id: str
    status: Status
    function: str
    args: dict[str, Any]
    result: Any = None
    error: str | None = None
    enqueue_time: datetime
    start_time: datetime | None = Field(
        None, description="When the first try started (each try's start is in attempt_log)"
    )
    finish_time: datetime | None = None
    attempts: int
    progress: int = 0  # percent, as the job reports it (tasks.set_progress)
    message: str | None = None
    run_at: datetime | None = None  # a deferred job's run time, as it was asked
    retry_of: str | None = None  # the job this one retries (POST /jobs/{id}/retry)
    retried_by: str | None = None  # the job that retries this one (ledger.get)
    attempt_log: list[Attempt] = []  # every try, from the attempts table (ledger.get)


def has_ended(job: JobView) -> bool:
    return job.status in FINAL


# --8<-- [end:job_view]


def _error_text(result: Any) -> str:
    if isinstance(result, dict) and "error" in result:
        return str(result["error"])
    return str(result)  # e.g. ARQ's own 'unable to serialize result'


async def read_from_redis(redis: ArqRedis, job_id: str, queue_name: str) -> JobView | None:
    """The job's state, or None once Redis has forgotten it (unknown, or result expired)."""
    # A hand-built Job assumes pickle and the default queue unless told otherwise.
    job = Job(job_id, redis, _queue_name=queue_name, _deserializer=deserialize)
    status = await job.status()
    # The stored result if finished, else the queued job. info() reads them in that order, so a
    # job the worker finishes in between is in neither: then the result is there to read again.
    info = await job.info() or await job.result_info()
    if status == JobStatus.not_found or info is None:
        return None
    view = JobView(
        job_id=job_id,
        status=Status(status.value),
        function=info.function,
        args=info.kwargs,
        enqueue_time=info.enqueue_time,
        attempts=int(await redis.get(retry_key_prefix + job_id) or 0),
    )
    if isinstance(info, JobResult):
        view = view.model_copy(update=outcome(info))
    return view


def outcome(info: JobResult) -> dict[str, Any]:
    """How a finished job ended, as JobView fields (the ledger stores the same ones)."""
    # ARQ calls every finished job "complete", even one that raised; we don't. Whether a
    # failure was a cancel was decided as its result was stored (_encode_exception).
    status = Status.COMPLETE if info.success else ended_as(info.result)
    ended: dict[str, Any] = {
        "status": status,
        "result": info.result if info.success else None,
        "error": None if info.success else _error_text(info.result),
        "finish_time": info.finish_time,
        "attempts": info.job_try,
    }
    # ARQ keeps only the last try's start. After one try that ran, that is the job's start;
    # after several, the job's is the first try's, which the worker recorded as it started.
    ran = not (isinstance(info.result, dict) and info.result.get("ran") is False)
    if info.job_try == 1 and ran:
        ended["start_time"] = info.start_time
    return ended | {"progress": 100} if info.success else ended


def ended_as(result: Any) -> Status:
    """The status a failed job's stored result gives it; ARQ's own strings are failures."""
    if not isinstance(result, dict):
        return Status.FAILED
    if "status" not in result and str(result.get("error")).startswith("CancelledError"):
        # Stored by the release before this one, which kept no status: read for the
        # KEEP_RESULT_S after an upgrade that such a result may still be in Redis.
        return Status.CANCELLED
    return Status.CANCELLED if result.get("status") == Status.CANCELLED else Status.FAILED


async def read_outcome(redis: ArqRedis, job_id: str, queue_name: str) -> dict[str, Any] | None:
    """How the job ended, as JobView fields, if Redis holds its result; None if not (yet)."""
    job = Job(job_id, redis, _queue_name=queue_name, _deserializer=deserialize)
    info = await job.result_info()
    return None if info is None else outcome(info)
