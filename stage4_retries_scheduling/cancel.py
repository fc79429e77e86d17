"""Cancel a job: `DELETE /jobs/{id}` (a router main.py includes, as it does history.py's)
and the one Redis transaction behind it, against the queue, the worker's claim and the result.

ARQ's own `Job.abort()` only asks: it adds the id to the `arq:abort` set, and a worker acts
on it. Here the API does what it safely can itself, and asks only for a job that is running.
"""

import asyncio
import time
from datetime import timedelta
from typing import Annotated, Literal, NamedTuple

from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import deserialize_job_raw, serialize_result
from arq.utils import timestamp_ms
from fastapi import APIRouter, HTTPException, Path, Response
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from .attempts import with_attempt_log
from .deps import LedgerDep, RedisDep, SettingsDep
from .jobs import (
    BETWEEN_TRIES,
    FINAL,
    KEEP_RESULT_S,
    LOST_IN_REDIS,
    NOT_RUN,
    JobView,
    deserialize,
    serialize,
)
from .jobstore import read_ledger_and_redis
from .ledger import Ledger
from .tables import now

# How long DELETE waits for a running job to stop before answering 202 "requested".
CANCEL_WAIT_S = 5.0
# How often cancel_and_wait looks again while a worker stops a running job. The worker
# checks the abort set on every poll (worker.POLL_DELAY_S), so a few polls' worth.
CANCEL_POLL_S = 0.05
# How many times one cancel looks again when the job changed under its transaction.
CANCEL_ROUNDS = 10
# A job on record that Redis has no trace of may still be on its way there, for this long:
# the row is written first, then the job enqueued, a few Redis round trips later (each
# bounded by REDIS_TIMEOUT_S), perhaps by another API process. Older, Redis has lost it.
CREATING_GRACE_S = 30

CancelOutcome = Literal["removed", "aborting", "finished"]
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
    job_id: Annotated[str, Path(max_length=64)],
    redis: RedisDep,
    ledger: LedgerDep,
    settings: SettingsDep,
    response: Response,
) -> JobView:
    """Cancel a queued, deferred or running job."""
    view = await cancel_job(redis, ledger, job_id, settings.queue_name, CANCEL_WAIT_S)
    if view is None:
        raise HTTPException(404, f"No job {job_id!r}")
    if view.status in FINAL and view.status != "cancelled":
        raise HTTPException(409, f"Job {job_id} has already finished: {view.status}")
    if view.status != "cancelled":
        response.status_code = 202  # still stopping: the worker has been asked to
        return view
    return with_attempt_log(view, await ledger.attempts(job_id))


async def cancel_job(
    redis: ArqRedis, ledger: Ledger, job_id: str, queue_name: str, wait_s: float
) -> JobView | None:
    """Cancel the job unless it has ended; returns it as it is now (None: an unknown job)."""
    view = await read_ledger_and_redis(redis, ledger, job_id, queue_name)
    if view is None or view.status in FINAL:
        return view
    await cancel_and_wait(redis, view, queue_name, wait_s)
    # Redis now has its result (unless it is still stopping); reading copies that into the
    # ledger, so the two agree however the race went.
    return await read_ledger_and_redis(redis, ledger, job_id, queue_name)


async def cancel_and_wait(
    redis: ArqRedis, job: JobView, queue_name: str, wait_s: float
) -> CancelOutcome:
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
async def cancel(redis: ArqRedis, job: JobView, queue_name: str) -> CancelOutcome:
    """Cancel the job (one on record) if it has not ended. Returns "removed" (taken off the
    queue, or kept from ever reaching it), "aborting" (a worker runs it and has been asked to
    stop) or "finished" (it has ended: nothing to cancel)."""
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(CANCEL_ROUNDS):
            found = await watch(pipe, job.job_id)
            if found is None:
                return "finished"
            pipe.multi()
            if found.running:
                # Only the worker can stop a running job: ARQ's abort set, read on every poll.
                # ARQ removes the entry when the job finishes and keeps it when the try ends in
                # a retry, so the next try is stopped before it runs; our hooks leave it alone.
                pipe.zadd(abort_jobs_ss, {job.job_id: timestamp_ms()})
            else:
                take_off_the_queue(pipe, job, found, queue_name)
            try:
                await pipe.execute()
            except WatchError:
                continue  # a worker claimed, retried or finished the job meanwhile: look again
            return "aborting" if found.running else "removed"
    # A job changes state a handful of times in its life; this many rounds in a row is not one.
    raise RedisTimeoutError(
        f"cancel: job {job.job_id} kept changing under {CANCEL_ROUNDS} attempts"
    )


class Unfinished(NamedTuple):
    running: bool  # a worker holds it
    raw: bytes | None  # the job, as ARQ stored it; None: Redis has no trace of it
    attempts: int  # tries so far


async def watch(pipe: Pipeline, job_id: str) -> Unfinished | None:
    """WATCH the job's keys and read them: what is left to cancel, or None if nothing is."""
    in_progress, result = in_progress_key_prefix + job_id, result_key_prefix + job_id
    job_key = job_key_prefix + job_id
    try:
        # WATCH what the worker changes when it claims (in-progress), retries or finishes
        # (in-progress, result, job): if any of it changes before EXEC, the transaction
        # fails and we look again. Watching the in-progress key alone misses a job that has
        # just finished: we would overwrite its result.
        await pipe.watch(in_progress, result, job_key)
        running, done = await pipe.exists(in_progress), await pipe.exists(result)
        raw = await pipe.get(job_key)
        attempts = int(await pipe.get(retry_key_prefix + job_id) or 0)
    except WatchError as exc:
        # Here, before EXEC, redis-py's WatchError means the connection was lost while
        # keys were WATCHed: Redis is down or stuck, a 503, not a retry.
        raise RedisConnectionError(f"cancel: {exc}") from exc
    if done:
        return None  # it has ended: a worker, or another cancel, stored its result
    return Unfinished(bool(running), raw, attempts)


def take_off_the_queue(pipe: Pipeline, job: JobView, found: Unfinished, queue_name: str) -> None:
    """Queue the commands that remove a job no worker runs, with "cancelled" as its result.
    A job Redis has no trace of gets that result too: a tombstone its enqueue cannot pass."""
    job_id = job.job_id
    in_progress, job_key = in_progress_key_prefix + job_id, job_key_prefix + job_id
    result = cancelled_result(job, found, queue_name)
    pipe.zrem(queue_name, job_id)
    pipe.zrem(abort_jobs_ss, job_id)
    pipe.set(result_key_prefix + job_id, result, ex=KEEP_RESULT_S)
    # An enqueue of this id may be in flight: the job is on record before it is in Redis,
    # and another request, or another API process, may be between the two. ARQ's enqueue
    # refuses an id that has a result, and WATCHes the job key while it checks, so writing
    # that key (and deleting it again) makes an enqueue that checked before us fail too.
    pipe.set(job_key, b"cancelled")
    pipe.delete(job_key, retry_key_prefix + job_id)
    # Likewise a worker may have read this id from the queue before our ZREM and be about
    # to claim it: it WATCHes the in-progress key. Left alone, it would run the job, find no
    # job key and store "job expired" over our result.
    pipe.set(in_progress, b"cancelled")
    pipe.delete(in_progress)


def why_cancelled(job: JobView, found: Unfinished) -> str:
    if found.raw is None:  # not in Redis: still on its way there, or lost with Redis's data
        young = job.enqueue_time > now() - timedelta(seconds=CREATING_GRACE_S)
        return NOT_RUN if young else LOST_IN_REDIS
    return BETWEEN_TRIES if found.attempts else NOT_RUN


def cancelled_result(job: JobView, found: Unfinished, queue: str) -> bytes:
    """The result ARQ would store for the job, failed with CancelledError(why)."""
    if found.raw is not None:  # the job as ARQ stored it
        raw = deserialize_job_raw(found.raw, deserializer=deserialize)
        (function, args, kwargs, _, enqueue_ms), attempts = raw, found.attempts
    else:  # the job as the ledger has it
        function, args, kwargs, attempts = job.function, (), job.args, job.attempts
        enqueue_ms = int(job.enqueue_time.timestamp() * 1000)
    error = asyncio.CancelledError(why_cancelled(job, found))
    at, ref = timestamp_ms(), f"{job.job_id}:{function}"
    fields = (function, args, kwargs, attempts, enqueue_ms, False, error, at, at, ref, queue)
    result = serialize_result(*fields, job.job_id, serializer=serialize)
    if result is None:  # ARQ's answer when it cannot serialize even the error
        raise TypeError(f"cancel: cannot store the cancelled result of job {job.job_id}")
    return result


# --8<-- [end:cancel]
