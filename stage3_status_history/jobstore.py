"""A job across its two stores: written to the ledger before Redis, read from the ledger
before Redis. Nothing here knows about HTTP; main.py's routes call these two functions."""

from arq.connections import ArqRedis
from redis.exceptions import WatchError

from . import errors
from .jobs import FINAL, JobView, Status, read_from_redis
from .ledger import Ledger
from .tables import now


# --8<-- [start:create_job]
async def create_job(redis: ArqRedis, ledger: Ledger, name: str, job_id: str, kwargs: dict) -> None:
    """The row comes first, then the job goes to Redis, so a job Redis loses is still on
    record. (Enqueue first, and a crash in between leaves a job no one can look up.)"""
    await ledger.add(job_id, name, kwargs, status=Status.QUEUED)
    try:
        job = await redis.enqueue_job(name, _job_id=job_id, **kwargs)
    except (errors.RedisConnectionError, errors.RedisTimeoutError, WatchError) as exc:
        # Redis failed before the transaction was sent (redis-py calls a connection lost
        # during WATCH a WatchError), so it stored nothing: the job has failed.
        error = f"not enqueued: Redis is unavailable ({type(exc).__name__})"
        await ledger.update(job_id, status=Status.FAILED, error=error, finish_time=now())
        raise errors.RedisConnectionError(error) from exc  # errors.redis_unavailable: 503
    if job is None:
        # The connection died with the transaction in flight (ARQ reports that as None, "id
        # taken"; ours is a fresh uuid). Redis may have stored it, and then a worker runs it.
        # So the row stays open, not "failed": the worker records how it ends if it runs.
        # (If it never arrived, it stays queued here; stage 4's cron job marks it lost.)
        error = "not confirmed: Redis did not answer the enqueue in time"
        await ledger.update(job_id, error=error)
        raise errors.RedisTimeoutError(error)


# --8<-- [end:create_job]


# --8<-- [start:read_job]
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
        return record  # finished: the ledger remembers after Redis has forgotten
    live = await read_from_redis(redis, job_id, queue_name)
    if live is None:
        return record  # Redis has forgotten it: the story so far (stage 4 settles such rows)
    if live.status in FINAL:
        # Redis is ahead of the row. The worker records the ending a moment later (its writes
        # go behind), or never: ARQ ended the job without calling its hooks (max tries,
        # expired), or the worker died first. So the read records it, a read repair: one
        # write that only an unfinished row takes, and the ledger keeps the ending after
        # Redis has forgotten it.
        ended = live.model_dump(include=ENDING, exclude_unset=True)
        await ledger.update(job_id, **ended)
        return record.model_copy(update=ended)
    return record.model_copy(update={"status": live.status, "attempts": live.attempts})


# --8<-- [end:read_job]
