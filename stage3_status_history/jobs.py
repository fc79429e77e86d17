"""How a job travels through Redis (JSON, never pickle) and how we report its state."""

import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from arq.connections import ArqRedis
from arq.constants import retry_key_prefix
from arq.jobs import Job, JobResult, JobStatus
from pydantic import BaseModel

# ARQ pickles jobs and results by default, and unpickling runs code: anyone who can write
# to Redis could then run commands in the worker and in this API. JSON carries only data.
# It has no exceptions, so a failed job's exception is stored as {"error": "Type: message"}.


def _encode_exception(value: object) -> dict[str, str]:
    if isinstance(value, BaseException):
        message = str(value)
        return {"error": f"{type(value).__name__}: {message}" if message else type(value).__name__}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize(data: dict[str, Any]) -> bytes:
    # allow_nan=False: a NaN or inf result would be invalid JSON for every client after us.
    return json.dumps(data, default=_encode_exception, allow_nan=False).encode()


def deserialize(data: bytes) -> dict[str, Any]:
    return json.loads(data)


class Status(StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"  # queued, to run at a later time
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    FAILED = "failed"  # ARQ calls this "complete" too; outcome() tells them apart


FINAL = frozenset({Status.COMPLETE, Status.FAILED})  # a job here will not change any more
UNFINISHED = frozenset(Status) - FINAL


class JobView(BaseModel):
    job_id: str
    status: Status
    function: str
    args: dict[str, Any]
    result: Any = None
    error: str | None = None
    enqueue_time: datetime
    start_time: datetime | None = None
    finish_time: datetime | None = None
    attempts: int
    progress: int = 0  # percent, as the job reports it (tasks.set_progress)
    message: str | None = None


def has_ended(job: JobView) -> bool:
    return job.status in FINAL


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
    # ARQ calls every finished job "complete", even one that raised; we don't.
    return {
        "status": Status.COMPLETE if info.success else Status.FAILED,
        "result": info.result if info.success else None,
        "error": None if info.success else _error_text(info.result),
        "start_time": info.start_time,
        "finish_time": info.finish_time,
        "attempts": info.job_try,
        **({"progress": 100} if info.success else {}),
    }


async def read_outcome(redis: ArqRedis, job_id: str, queue_name: str) -> dict[str, Any] | None:
    """How the job ended, as JobView fields, if Redis holds its result; None if not (yet)."""
    job = Job(job_id, redis, _queue_name=queue_name, _deserializer=deserialize)
    info = await job.result_info()
    return None if info is None else outcome(info)
