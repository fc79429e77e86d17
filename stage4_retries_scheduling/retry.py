"""Retry a job by hand: `POST /jobs/{id}/retry` (a router main.py includes, as it does
cancel.py's), the jobs page's Retry button.

A retry is a *new* job with the old one's function and arguments, and `retry_of` naming the
old one (the old job keeps its story; `GET /jobs/{old}` names the new one in `retried_by`).
One click must make one job, and a double click or a second tab must not make two: so an
old job has at most one retry, held by a UNIQUE `retry_of` in the ledger, and asking again
answers with the same new job. (A retry of the retry is the way to try a third time.)

`POST /jobs/retry` retries the failed jobs a filter selects (the page's "Retry failed
jobs"), at most MAX_BULK_RETRY at a time, newest first, each as above: a job already
retried is left out, so sending it twice retries nothing twice.
"""

import uuid
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import WatchError

from jobkit.http import BODY_ERRORS

from . import errors
from .deps import LedgerDep, RedisDep, SettingsDep
from .jobs import JobView, Status
from .jobstore import read_job
from .ledger import Ledger
from .tables import now

RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})  # a complete job is not retried
MAX_BULK_RETRY = 100  # failed jobs one bulk retry makes new jobs for, at most

router = APIRouter(tags=["jobs"])


class Retried(BaseModel):
    job_id: str  # the new job (the same one, asked again)
    status_url: str
    retry_of: str


# --8<-- [start:retry]
@router.post(
    "/jobs/{job_id}/retry",
    status_code=202,
    summary="Retry a failed or cancelled job",
    responses={
        404: {"description": "Unknown job"},
        409: {"description": "The job has not failed or been cancelled"},
        **errors.REDIS_DOWN,
    },
)
async def retry_job(
    job_id: Annotated[str, Path(max_length=64)],
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    response: Response,
) -> Retried:
    """A new job with the same function and arguments; asked again, the same new job."""
    old = await read_job(redis, ledger, job_id, settings.queue_name)
    if old is None:
        raise HTTPException(404, f"No job {job_id!r}")
    if old.status not in RETRYABLE:
        raise HTTPException(409, f"Job {job_id} is {old.status}: only a failed or cancelled job")
    new_id, made = await ledger.add_retry(old, uuid.uuid4().hex)
    if made:  # the row first, then Redis, as create_job does
        await enqueue(redis, ledger, new_id, old)
    response.headers["Location"] = f"/jobs/{new_id}"
    return Retried(job_id=new_id, status_url=f"/jobs/{new_id}", retry_of=job_id)


# --8<-- [end:retry]


class BulkRetry(BaseModel):
    # As the tasks' bodies are: strict ("5" is not 5, true is not 1), no unknown field.
    model_config = ConfigDict(strict=True, extra="forbid")

    function: str | None = Field(None, max_length=64)  # the page's filter; None: any
    max_jobs: int = Field(MAX_BULK_RETRY, ge=1, le=MAX_BULK_RETRY)


class BulkRetried(BaseModel):
    retried: list[Retried]
    more: bool  # more failed jobs match than max_jobs: ask again for the next ones


@router.post(
    "/jobs/retry",
    status_code=202,
    summary="Retry the failed jobs a filter selects",
    responses={**BODY_ERRORS, **errors.REDIS_DOWN},
)
async def retry_failed_jobs(body: BulkRetry, redis: RedisDep, ledger: LedgerDep) -> BulkRetried:
    """A new job for each failed job (of `function`) not retried yet, newest first, at most
    `max_jobs`."""
    failed = await ledger.failed_not_retried(body.function, body.max_jobs + 1)
    retried = []
    for old in failed[: body.max_jobs]:
        new_id, made = await ledger.add_retry(old, uuid.uuid4().hex)
        if made:
            await enqueue(redis, ledger, new_id, old)
        retried.append(Retried(job_id=new_id, status_url=f"/jobs/{new_id}", retry_of=old.job_id))
    return BulkRetried(retried=retried, more=len(failed) > body.max_jobs)


async def enqueue(redis: ArqRedis, ledger: Ledger, new_id: str, old: JobView) -> None:
    try:
        await redis.enqueue_job(old.function, _job_id=new_id, **old.args)
    except (errors.RedisConnectionError, errors.RedisTimeoutError, WatchError) as exc:
        error = f"not enqueued: Redis is unavailable ({type(exc).__name__})"
        await ledger.update(new_id, status=Status.FAILED, error=error, finish_time=now())
        raise errors.RedisConnectionError(error) from exc  # errors.redis_unavailable: 503
