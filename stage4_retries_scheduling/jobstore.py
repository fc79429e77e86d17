"""A job across its two stores: written to the ledger before Redis, read from the ledger
before Redis. Nothing here knows about HTTP; main.py's routes call these two functions."""

from datetime import datetime

from arq.connections import ArqRedis
from redis.exceptions import WatchError

from . import errors
from .jobs import FINAL, Attempt, JobView, Status, read_from_redis, read_outcome
from .ledger import Ledger
from .tables import now


# --8<-- [start:create_job]
class EnqueueUnconfirmed(errors.RedisTimeoutError):
    """The enqueue was sent but not confirmed: Redis may hold the job (a 503 all the same)."""


async def create_job(
    redis: ArqRedis,
    ledger: Ledger,
    name: str,
    job_id: str,
    kwargs: dict,
    when: datetime | None = None,
) -> None:
    """The row comes first, then the job goes to Redis, so a job Redis loses is still on
    record. (Enqueue first, and a crash in between leaves a job no one can look up.)"""
    status = Status.DEFERRED if when else Status.QUEUED  # when: run_at or delay_seconds
    await ledger.add(job_id, name, kwargs, status=status, run_at=when)
    await enqueue(redis, ledger, name, job_id, kwargs, when)


async def enqueue(
    redis: ArqRedis,
    ledger: Ledger,
    name: str,
    job_id: str,
    kwargs: dict,
    when: datetime | None = None,
    **if_not_sent: object,
) -> None:
    """Send the job whose row is written to Redis. `if_not_sent`: more of the row to change
    when Redis stored nothing (a retry unlinks itself from the job it retried, retry.py)."""
    try:
        job = await redis.enqueue_job(name, _job_id=job_id, _defer_until=when, **kwargs)
    except (errors.RedisConnectionError, errors.RedisTimeoutError, WatchError) as exc:
        # Redis failed before the transaction was sent (redis-py calls a connection lost
        # during WATCH a WatchError), so it stored nothing: the job has failed.
        error = f"not enqueued: Redis is unavailable ({type(exc).__name__})"
        await ledger.update(
            job_id, status=Status.FAILED, error=error, finish_time=now(), **if_not_sent
        )
        raise errors.RedisConnectionError(error) from exc  # errors.redis_unavailable: 503
    if job is None and await cancelled_meanwhile(redis, ledger, job_id):
        return  # the job exists, cancelled: GET /jobs/{id} says so
    if job is None:
        # The connection died with the transaction in flight (ARQ reports that as None, "id
        # taken"). Redis may have stored it, and then a worker runs it. So the row stays
        # open, not "failed": the worker records how it ends if it runs, reconcile() marks
        # it lost if it never arrived.
        error = "not confirmed: Redis did not answer the enqueue in time"
        await ledger.update(job_id, error=error)
        raise EnqueueUnconfirmed(error)


async def cancelled_meanwhile(redis: ArqRedis, ledger: Ledger, job_id: str) -> bool:
    """Did a DELETE get in between the row and the enqueue? Our id is a fresh uuid, so ARQ's
    "id taken" can only be the cancelled result DELETE stores (cancel.py): it is recorded."""
    try:
        ended = await read_outcome(redis, job_id, redis.default_queue_name)
    except (errors.RedisConnectionError, errors.RedisTimeoutError):
        return False  # Redis is gone: we cannot tell, and the job stays unconfirmed
    if ended is None or ended["status"] != Status.CANCELLED:
        return False
    await ledger.update(job_id, **ended)  # as the DELETE did (if its own write failed)
    return True


# --8<-- [end:create_job]


# What a job's ending in Redis gives its row: the fields jobs.outcome() sets.
ENDING = {"status", "result", "error", "start_time", "finish_time", "attempts", "progress"}


async def read_job(redis: ArqRedis, ledger: Ledger, job_id: str, queue_name: str) -> JobView | None:
    """The ledger's story, with Redis's word on where an unfinished job is now; None for a job
    not on record."""
    record = await ledger.get(job_id)
    if record is None:
        # Not a job this API made: Redis also holds other code's jobs (ARQ's cron runs, say),
        # and the ledger, not Redis, says which jobs are ours to show.
        return None
    if record.status in FINAL:
        return with_last_try(record)  # finished: the ledger remembers after Redis forgets
    live = await read_from_redis(redis, job_id, queue_name)
    if live is None:
        return record  # Redis has forgotten it: the story so far (the cron job settles it)
    if live.status in FINAL:
        # Redis is ahead of the row. The worker records the ending a moment later (its writes
        # go behind), or never: ARQ ended the job without calling its hooks (max tries,
        # expired), or the worker died first. So the read records it, a read repair: one
        # write that only an unfinished row takes, and the ledger keeps the ending after
        # Redis has forgotten it.
        ended = live.model_dump(include=ENDING, exclude_unset=True)
        await ledger.update(job_id, **ended)
        return with_last_try(record.model_copy(update=ended))
    return record.model_copy(update={"status": live.status, "attempts": live.attempts})


def with_last_try(job: JobView) -> JobView:
    """A finished job's attempt log ends with the try that finished it. The worker writes that
    try's row a moment after the result (its writes go behind); until it lands, the try is
    shown from the job's own ending, so a finished job never looks untried. (A cancel that
    took the job off the queue ended no try: nothing to show.)"""
    if job.status not in (Status.COMPLETE, Status.FAILED) or not job.attempts:
        return job
    if any(attempt.attempt == job.attempts for attempt in job.attempt_log):
        return job
    last = Attempt(
        attempt=job.attempts,
        outcome=job.status,
        error=job.error,
        start_time=job.start_time if job.attempts == 1 else None,  # later tries' are not kept
        finish_time=job.finish_time,
    )
    return job.model_copy(update={"attempt_log": [*job.attempt_log, last]})
