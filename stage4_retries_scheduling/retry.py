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
from typing import Annotated, Any, Literal

from arq.connections import ArqRedis
from fastapi import APIRouter, HTTPException, Path, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobkit.http import BODY_ERRORS

from . import errors
from .deps import ClientDep, LedgerDep, RedisDep, SettingsDep
from .jobs import JobView, Status, read_from_redis
from .jobstore import EnqueueUnconfirmed, enqueue, read_job
from .ledger import Ledger
from .tasks import TASKS

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
        409: {"description": "The job has not failed or been cancelled, or its task is gone"},
        422: {"description": "Its arguments are refused today, as POST /tasks/{name} would"},
        **errors.REDIS_DOWN,
    },
)
async def retry_job(
    job_id: Annotated[str, Path(max_length=64, pattern=r"^[!-~]+$")],
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    client: ClientDep,
    response: Response,
) -> Retried:
    """A new job with the same function and arguments; asked again, the same new job."""
    old = await read_job(redis, ledger, job_id, settings.queue_name)
    if old is None:
        raise HTTPException(404, f"No job {job_id!r}")
    if old.status not in RETRYABLE:
        raise HTTPException(409, f"Job {job_id} is {old.status}: only a failed or cancelled job")
    kwargs = await checked_args(old, client)  # as POST /tasks/{name} checks a new job's
    new_id = await retry_once(redis, ledger, old, kwargs)
    response.headers["Location"] = f"/jobs/{new_id}"
    return Retried(job_id=new_id, status_url=f"/jobs/{new_id}", retry_of=job_id)


async def retry_once(redis: ArqRedis, ledger: Ledger, old: JobView, kwargs: dict) -> str:
    """The id of `old`'s one retry: made and sent now, or made before. One made before whose
    enqueue never reached Redis (its API crashed in between) is sent again."""
    new_id, made = await ledger.add_retry(old, uuid.uuid4().hex, kwargs)
    if made or await never_sent(redis, ledger, new_id):  # the row first, then Redis
        await send(redis, ledger, new_id, old.function, kwargs)
    return new_id


# --8<-- [end:retry]


async def never_sent(redis: ArqRedis, ledger: Ledger, job_id: str) -> bool:
    """A retry's row still queued, that Redis knows nothing of."""
    row = await ledger.get(job_id)
    if row is None or row.status != Status.QUEUED:
        return False
    return await read_from_redis(redis, job_id, redis.default_queue_name) is None


async def send(redis: ArqRedis, ledger: Ledger, job_id: str, function: str, kwargs: dict) -> None:
    """jobstore's enqueue, for a retry. Not sent (Redis down), the retry unlinks itself from
    the old job, so the next click makes a fresh one. Two clicks may both send it (both saw
    it never sent): ARQ takes the first and answers the other "id taken", which is then
    no failure."""
    try:
        await enqueue(redis, ledger, function, job_id, kwargs, retry_of=None)
    except EnqueueUnconfirmed:
        if await read_from_redis(redis, job_id, redis.default_queue_name) is None:
            raise
        await ledger.update(job_id, error=None)  # Redis holds it: sent after all


async def checked_args(old: JobView, client: str) -> dict[str, Any]:
    """The old job's arguments as its task's route checks them today (409, 422 if not)."""
    if old.function not in TASKS:
        raise HTTPException(409, f"Job {old.job_id}'s task {old.function!r} no longer exists")
    model, _ = TASKS[old.function]
    try:
        args = model.model_validate(old.args)
    except ValidationError as exc:
        where = [{**error, "loc": ("args", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(where) from None
    await args.check_before_enqueue(client)  # fetch's SSRF guard
    return args.model_dump()


class BulkRetry(BaseModel):
    # As the tasks' bodies are: strict ("5" is not 5, true is not 1), no unknown field.
    model_config = ConfigDict(strict=True, extra="forbid")

    # The page's filter, one of the task names as GET /jobs has it; None: any.
    function: Literal[tuple(TASKS)] | None = None  # type: ignore[valid-type]
    max_jobs: int = Field(MAX_BULK_RETRY, ge=1, le=MAX_BULK_RETRY)


class Refused(BaseModel):
    job_id: str
    reason: str  # what POST /jobs/{job_id}/retry would have answered


class BulkRetried(BaseModel):
    retried: list[Retried]  # made by this request (another tab's are its own)
    refused: list[Refused]  # their arguments or task are refused today
    more: bool  # more failed jobs match than max_jobs: ask again for the next ones
    stopped: str | None = None  # why it stopped before the end: Redis failed halfway


@router.post(
    "/jobs/retry",
    status_code=202,
    summary="Retry the failed jobs a filter selects",
    responses={**BODY_ERRORS, **errors.REDIS_DOWN},
)
async def retry_failed_jobs(
    body: BulkRetry, redis: RedisDep, ledger: LedgerDep, client: ClientDep
) -> BulkRetried:
    """A new job for each failed job (of `function`) not retried yet, newest first, at most
    `max_jobs`. If Redis fails halfway, the answer says what was made, and why it stopped."""
    failed = await ledger.failed_not_retried(body.function, body.max_jobs + 1)
    done = BulkRetried(retried=[], refused=[], more=len(failed) > body.max_jobs)
    for old in failed[: body.max_jobs]:
        try:
            if made := await retry_new(redis, ledger, old, client):
                done.retried.append(made)
        except (HTTPException, RequestValidationError) as exc:
            done.refused.append(Refused(job_id=old.job_id, reason=reason(exc)))
        except (errors.RedisConnectionError, errors.RedisTimeoutError) as exc:
            if not done.retried:
                raise  # nothing made: a plain 503
            done.stopped = f"Redis is unavailable ({type(exc).__name__}): stopped halfway"
            break
    return done


async def retry_new(redis: ArqRedis, ledger: Ledger, old: JobView, client: str) -> Retried | None:
    """`old`'s retry, made and sent by this request; None if another request made it."""
    kwargs = await checked_args(old, client)
    new_id, made = await ledger.add_retry(old, uuid.uuid4().hex, kwargs)
    if not made:  # another tab's, just now: it answers for it
        return None
    await send(redis, ledger, new_id, old.function, kwargs)
    return Retried(job_id=new_id, status_url=f"/jobs/{new_id}", retry_of=old.job_id)


def reason(exc: HTTPException | RequestValidationError) -> str:
    if isinstance(exc, HTTPException):
        return str(exc.detail)
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
