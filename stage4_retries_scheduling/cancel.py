"""Cancel a job: `DELETE /jobs/{id}` (a router main.py includes, as it does history.py's)
and the one Redis transaction behind it, against the queue, the worker's claim and the result.

ARQ's own `Job.abort()` only asks: it adds the id to the `arq:abort` set, and a worker acts
on it. Here the API does what it safely can itself, and asks only for a job that is running.
"""

import asyncio
import time
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
from .jobs import BETWEEN_TRIES, FINAL, KEEP_RESULT_S, NOT_RUN, JobView, deserialize, serialize
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
# The error a job gets when DELETE finds it on record but nowhere in Redis.
LOST_IN_REDIS = "CancelledError: cancelled; Redis no longer had this job"

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
    how = await cancel_and_wait(redis, job_id, queue_name, wait_s)
    # Redis now has its result (unless it is still stopping); reading copies that into the
    # ledger, so the two agree however the race went.
    view = await read_ledger_and_redis(redis, ledger, job_id, queue_name)
    if how == "finished" and view is not None and view.status not in FINAL:
        # On record, but Redis has no trace of it (flushed, or restarted without its data):
        # nothing will run it, so the ledger records the cancel itself.
        await ledger.update(job_id, status="cancelled", finish_time=now(), error=LOST_IN_REDIS)
        view = await read_ledger_and_redis(redis, ledger, job_id, queue_name)
    return view


async def cancel_and_wait(
    redis: ArqRedis, job_id: str, queue_name: str, wait_s: float
) -> CancelOutcome:
    """Cancel, and give a running job up to `wait_s` to stop: "aborting" if it still runs."""
    deadline = time.monotonic() + wait_s
    while (how := await cancel(redis, job_id, queue_name)) == "aborting":
        if time.monotonic() > deadline:
            break
        # Asking again is the point, not a formality: a try that ended in a retry before the
        # worker saw our request leaves the job waiting in the queue, and the next round
        # takes it off at once instead of letting the worker abort it at its retry time.
        await asyncio.sleep(CANCEL_POLL_S)
    return how


# --8<-- [end:delete]


# --8<-- [start:cancel]
async def cancel(redis: ArqRedis, job_id: str, queue_name: str) -> CancelOutcome:
    """Cancel the job if it has not ended. Returns "removed" (taken off the queue: not
    started, or between tries), "aborting" (a worker runs it and has been asked to stop) or
    "finished" (it has ended: nothing to cancel)."""
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(CANCEL_ROUNDS):
            job = await watch(pipe, job_id, queue_name)
            if job is None:
                return "finished"  # or Redis no longer has it: nothing left to stop
            pipe.multi()
            if job.running:
                # Only the worker can stop a running job: ARQ's abort set, read on every poll.
                # ARQ removes the entry when the job finishes and keeps it when the try ends in
                # a retry, so the next try is stopped before it runs; our hooks leave it alone.
                pipe.zadd(abort_jobs_ss, {job_id: timestamp_ms()})
            else:
                take_off_the_queue(pipe, job_id, job, queue_name)
            try:
                await pipe.execute()
            except WatchError:
                continue  # a worker claimed, retried or finished the job meanwhile: look again
            return "aborting" if job.running else "removed"
    # A job changes state a handful of times in its life; this many rounds in a row is not one.
    raise RedisTimeoutError(f"cancel: job {job_id} kept changing under {CANCEL_ROUNDS} attempts")


class Unfinished(NamedTuple):
    running: bool  # a worker holds it
    raw: bytes  # the queued job, as ARQ stored it
    attempts: int  # tries so far


async def watch(pipe: Pipeline, job_id: str, queue_name: str) -> Unfinished | None:
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
        raw, score = await pipe.get(job_key), await pipe.zscore(queue_name, job_id)
        attempts = int(await pipe.get(retry_key_prefix + job_id) or 0)
    except WatchError as exc:
        # Here, before EXEC, redis-py's WatchError means the connection was lost while
        # keys were WATCHed: Redis is down or stuck, a 503, not a retry.
        raise RedisConnectionError(f"cancel: {exc}") from exc
    if done or not raw or (score is None and not running):
        return None  # ended, or Redis no longer has it
    return Unfinished(bool(running), raw, attempts)


def take_off_the_queue(pipe: Pipeline, job_id: str, job: Unfinished, queue_name: str) -> None:
    """Queue the commands that remove a job no worker runs, with "cancelled" as its result."""
    why = BETWEEN_TRIES if job.attempts else NOT_RUN
    result = cancelled_result(job.raw, job_id, job.attempts, why, queue_name)
    in_progress = in_progress_key_prefix + job_id
    pipe.zrem(queue_name, job_id)
    pipe.zrem(abort_jobs_ss, job_id)
    pipe.delete(job_key_prefix + job_id, retry_key_prefix + job_id)
    pipe.set(result_key_prefix + job_id, result, ex=KEEP_RESULT_S)
    # A worker may have read this id from the queue before our ZREM and be about to claim
    # it: it WATCHes the in-progress key, so writing that key (and deleting it again) makes
    # its claim fail. Left alone, it would run the job, find no job key and store "job
    # expired" over our result.
    pipe.set(in_progress, b"cancelled")
    pipe.delete(in_progress)


def cancelled_result(raw: bytes, job_id: str, attempts: int, why: str, queue: str) -> bytes:
    """The result ARQ would store for the job, failed with CancelledError(why)."""
    function, args, kwargs, _, enqueue_ms = deserialize_job_raw(raw, deserializer=deserialize)
    at, ref, error = timestamp_ms(), f"{job_id}:{function}", asyncio.CancelledError(why)
    fields = (function, args, kwargs, attempts, enqueue_ms, False, error, at, at, ref, queue)
    result = serialize_result(*fields, job_id, serializer=serialize)
    if result is None:  # ARQ's answer when it cannot serialize even the error
        raise TypeError(f"cancel: cannot store the cancelled result of job {job_id}")
    return result


# --8<-- [end:cancel]
