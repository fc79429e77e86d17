"""Cancel a job: `DELETE /jobs/{id}` (a router main.py includes, as it does history.py's),
and what it decides: a job no worker runs is taken off the queue, a running one is asked to
stop, a finished one is left alone.

ARQ's own `Job.abort()` only asks: it adds the id to the `arq:abort` set, and a worker acts
on it. Here the API does what it safely can itself, and asks only for a job that is running.
"""

import asyncio
import time
from datetime import timedelta
from typing import Annotated

from arq.connections import ArqRedis
from arq.jobs import deserialize_job_raw
from fastapi import APIRouter, HTTPException, Path, Response

from jobkit import arq_jobs
from jobkit.arq_jobs import Cancelled, Found

from .deps import LedgerDep, RedisDep, SettingsDep
from .jobs import (
    BETWEEN_TRIES,
    FINAL,
    KEEP_RESULT_S,
    LOST_IN_REDIS,
    NOT_RUN,
    CancelledBeforeItRan,
    JobView,
    Status,
    deserialize,
    read_outcome,
    serialize,
)
from .jobstore import read_job
from .ledger import Ledger
from .tables import now

# How long DELETE waits for a running job to stop before answering 202 "requested".
CANCEL_WAIT_S = 5.0
# How often cancel_and_wait looks again while a worker stops a running job. The worker
# checks the abort set on every poll (worker.POLL_DELAY_S), so a few polls' worth.
CANCEL_POLL_S = 0.05
# A job on record that Redis has no trace of may still be on its way there, for this long:
# the row is written first, then the job enqueued, a few Redis round trips later (each
# bounded by REDIS_TIMEOUT_S), perhaps by another API process. Older, Redis has lost it.
CREATING_GRACE_S = 30

router = APIRouter(tags=["jobs"])


# --8<-- [start:delete]
@router.delete(
    "/jobs/{job_id}",
    summary="Cancel a job",  # FastAPI would call it "Delete Job", after the function
    responses={
        202: {"description": "Still running: cancellation requested"},
        404: {"description": "Unknown job"},
        409: {"description": "The job has already finished"},
    },
)
async def delete_job(
    job_id: Annotated[str, Path(max_length=64, pattern=r"^[!-~]+$")],
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    response: Response,
) -> JobView:
    """Cancel a queued, deferred or running job."""
    view = await cancel_job(redis, ledger, job_id, settings.queue_name, CANCEL_WAIT_S)
    if view is None:
        raise HTTPException(404, f"No job {job_id!r}")
    if view.status in FINAL and view.status != Status.CANCELLED:
        raise HTTPException(409, f"Job {job_id} has already finished: {view.status}")
    if view.status != Status.CANCELLED:
        response.status_code = 202  # still stopping: the worker has been asked to
    return view


async def cancel_job(
    redis: ArqRedis, ledger: Ledger, job_id: str, queue_name: str, wait_s: float
) -> JobView | None:
    """Cancel the job unless it has ended; returns it as it is now (None: an unknown job)."""
    view = await read_job(redis, ledger, job_id, queue_name)
    if view is None or view.status in FINAL:
        return view
    await cancel_and_wait(redis, view, queue_name, wait_s)
    # If it has ended, the ledger copies how from Redis now, so the two agree: a job taken off
    # the queue has no worker to record its cancel, nor one a worker stopped before it
    # started (ARQ calls no hook then). Over a row its worker has recorded, this changes nothing.
    if ended := await read_outcome(redis, job_id, queue_name):
        await ledger.update(job_id, **ended)
    return await read_job(redis, ledger, job_id, queue_name)


async def cancel_and_wait(
    redis: ArqRedis, job: JobView, queue_name: str, wait_s: float
) -> Cancelled:
    """Cancel, and give a running job up to `wait_s` to stop: "aborting" if it still runs."""
    deadline = time.monotonic() + wait_s
    while (how := await cancel(redis, job, queue_name)) == "aborting":
        if time.monotonic() > deadline:
            break
        # Asking again is the point, not a formality: a try that ended in a retry before the
        # worker saw our request leaves the job waiting in the queue, and the next round
        # takes it off at once instead of letting the worker abort it at its retry time.
        await asyncio.sleep(CANCEL_POLL_S)
    return how


# --8<-- [end:delete]


# --8<-- [start:cancel]
async def cancel(redis: ArqRedis, job: JobView, queue_name: str) -> Cancelled:
    """Cancel the job (one on record) if it has not ended: "removed" (taken off the queue, or
    kept from ever reaching it), "aborting" (a worker runs it and has been asked to stop) or
    "finished" (it has ended: nothing to cancel). One Redis transaction (jobkit.arq_jobs)
    against the queue, the worker's claim and the result, so no worker starts the job as we
    take it off, and no result is overwritten."""

    def result(found: Found) -> bytes:  # what the job ends with: ARQ's own shape of result
        return cancelled_result(job, found, queue_name)

    return await arq_jobs.cancel(redis, job.job_id, queue_name, result, KEEP_RESULT_S)


def why_cancelled(job: JobView, found: Found) -> str:
    if found.raw is None:  # not in Redis: still on its way there, or lost with Redis's data
        young = job.enqueue_time > now() - timedelta(seconds=CREATING_GRACE_S)
        return NOT_RUN if young else LOST_IN_REDIS
    return BETWEEN_TRIES if found.attempts else NOT_RUN


def cancelled_result(job: JobView, found: Found, queue_name: str) -> bytes:
    """The result the job ends with: failed with CancelledError(why), as ARQ would store it.
    A job Redis has no trace of gets it too: a tombstone its enqueue cannot pass."""
    if found.raw is not None:  # the job as ARQ stored it
        stored = deserialize_job_raw(found.raw, deserializer=deserialize)
        function, args, kwargs, _, enqueue_ms = stored
        attempts = found.attempts
    else:  # the job as the ledger has it
        function, args, kwargs = job.function, (), job.args
        attempts = job.attempts
        enqueue_ms = int(job.enqueue_time.timestamp() * 1000)
    error = CancelledBeforeItRan(why_cancelled(job, found))
    fields = (function, args, kwargs, attempts, enqueue_ms, error, queue_name)
    return arq_jobs.failed_result(job.job_id, *fields, serializer=serialize)


# --8<-- [end:cancel]
