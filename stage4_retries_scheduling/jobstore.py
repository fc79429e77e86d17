"""A job across its two stores: written to the ledger before Redis, read from the ledger
before Redis. Nothing here knows about HTTP; main.py's routes call these two functions."""

from datetime import datetime

from arq.connections import ArqRedis
from redis.exceptions import WatchError

from . import errors
from .jobs import FINAL, JobView, read_from_redis
from .ledger import Ledger
from .tables import now


# --8<-- [start:create_job]
class EnqueueUnconfirmed(errors.RedisTimeoutError):
    """The enqueue was sent but not confirmed: Redis may hold the job (a 503 all the same)."""


async def create_job(
    redis: ArqRedis, ledger: Ledger, name: str, job_id: str, kwargs: dict, when: datetime | None
) -> None:
    """The row comes first, then the job goes to Redis, so a job Redis loses is still on
    record. (Enqueue first, and a crash in between leaves a job no one can look up.)"""
    status = "deferred" if when else "queued"  # when: run_at or delay_seconds (scheduling.py)
    await ledger.add(job_id, name, kwargs, status=status)
    try:
        job = await redis.enqueue_job(name, _job_id=job_id, _defer_until=when, **kwargs)
    except (errors.RedisConnectionError, errors.RedisTimeoutError, WatchError) as exc:
        # Redis failed before the transaction was sent (redis-py calls a connection lost
        # during WATCH a WatchError), so it stored nothing: the job has failed.
        error = f"not enqueued: Redis is unavailable ({type(exc).__name__})"
        await ledger.update(job_id, status="failed", error=error, finish_time=now())
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
        ended = await ledger.record_result_from_redis(redis, job_id, redis.default_queue_name)
    except (errors.RedisConnectionError, errors.RedisTimeoutError):
        return False  # Redis is gone: we cannot tell, and the job stays unconfirmed
    return ended.get("status") == "cancelled"


# --8<-- [end:create_job]


async def read_ledger_and_redis(
    redis: ArqRedis, ledger: Ledger, job_id: str, queue_name: str
) -> JobView | None:
    """The ledger's story plus Redis's live status; None for a job not on record."""
    record = await ledger.get(job_id)
    if record is None:
        # Not a job this API made: Redis also holds other code's jobs (ARQ's cron runs, say),
        # and the ledger, not Redis, says which jobs are ours to show.
        return None
    if record.status in FINAL:
        return record  # finished: the ledger remembers after Redis has forgotten
    # Unfinished as far as the ledger knows. If Redis holds a result, record it now:
    # ARQ skips the worker's hooks for some endings (max tries, expired).
    if await ledger.record_result_from_redis(redis, job_id, queue_name):
        return await ledger.get(job_id)
    view = await read_from_redis(redis, job_id, queue_name)
    if view is not None and view.status in FINAL:
        # It ended between our two reads. Record it and answer from the ledger: Redis's view
        # has no progress, and would show a job that just completed at 0 %.
        await ledger.record_result_from_redis(redis, job_id, queue_name)
        return await ledger.get(job_id)
    if view is not None:  # None: Redis lost it; reconcile() marks it failed in time
        record.status, record.attempts = view.status, view.attempts  # where it is now
    return record  # the story so far
