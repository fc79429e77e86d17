"""ARQ's Redis keys, handled directly where ARQ's own API has no operation for what we need.

ARQ keeps a job in a few keys (ARQ_NOTES.md, A1): `arq:job:<id>` (the job), the queue's sorted
set (its score: when it may run), `arq:in-progress:<id>` (a worker holds it), `arq:retry:<id>`
(tries so far), `arq:result:<id>` (how it ended), and the `arq:abort` set. Its `Job.abort()`
only asks a worker, and waits; it cannot take a job off the queue, and it races with the
worker's own transactions. Here:

- `cancel(redis, job_id, queue_name, result)`: one WATCH/MULTI transaction against the queue,
  the worker's claim and the result. A job a worker runs is asked to stop (ARQ's abort set);
  a job no worker runs is taken off the queue with `result(found)` stored as its result, a
  tombstone that a late enqueue or a late claim of the id cannot pass; an ended job is left
  alone. Returns which of the three it was.
- `failed_result(...)`: the result ARQ itself would store for a job that failed with an error.
- `ends(redis, job_ids, queue_name)`: what Redis knows of many jobs, in one round trip: the
  stored result, or whether the job is still live.

A learner may skip this module: stage 4's cancel.py and maintenance.py keep the decisions.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import Serializer, serialize_result
from arq.utils import timestamp_ms
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

# How many times one cancel looks again when the job changed under its transaction. A job
# changes state a handful of times in its life; this many in a row is not one.
CANCEL_ROUNDS = 10

Cancelled = Literal["removed", "aborting", "finished"]


@dataclass(frozen=True)
class Found:
    """A job that has not ended, as its keys show it inside the transaction."""

    running: bool  # a worker holds it
    raw: bytes | None  # the job as ARQ stored it; None: Redis has no trace of it (yet)
    attempts: int  # tries so far


async def cancel(
    redis: ArqRedis,
    job_id: str,
    queue_name: str,
    result: Callable[[Found], bytes],
    keep_result_s: float,
) -> Cancelled:
    """Cancel the job unless it has ended: "removed" (taken off the queue, or kept from ever
    reaching it, with `result(found)` as its result), "aborting" (a worker runs it and has
    been asked to stop) or "finished" (it had ended: nothing was done)."""
    async with redis.pipeline(transaction=True) as pipe:
        for _ in range(CANCEL_ROUNDS):
            found = await _watch(pipe, job_id)
            if found is None:
                return "finished"
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            if found.running:
                # Only the worker can stop a running job: ARQ's abort set, read on every poll.
                # ARQ removes the entry when the job finishes and keeps it when the try ends in
                # a retry, so the next try is stopped before it runs.
                pipe.zadd(abort_jobs_ss, {job_id: timestamp_ms()})
            else:
                _take_off_the_queue(pipe, job_id, queue_name, result(found), keep_result_s)
            try:
                await pipe.execute()
            except WatchError:
                continue  # a worker claimed, retried or finished the job meanwhile: look again
            return "aborting" if found.running else "removed"
    raise RedisTimeoutError(f"cancel: job {job_id} kept changing under {CANCEL_ROUNDS} attempts")


async def _watch(pipe: Pipeline, job_id: str) -> Found | None:
    """WATCH the job's keys and read them: what is left to cancel, or None if it has ended."""
    in_progress = in_progress_key_prefix + job_id
    result = result_key_prefix + job_id
    job_key = job_key_prefix + job_id
    try:
        # WATCH what a worker changes when it claims (in-progress), retries or finishes
        # (in-progress, result, job): if any of it changes before EXEC, the transaction fails
        # and we look again. Watching the in-progress key alone misses a job that has just
        # finished: we would overwrite its result.
        await pipe.watch(in_progress, result, job_key)
        running = await pipe.exists(in_progress)
        done = await pipe.exists(result)
        raw = await pipe.get(job_key)
        attempts = int(await pipe.get(retry_key_prefix + job_id) or 0)
    except WatchError as exc:
        # Here, before EXEC, redis-py's WatchError means the connection was lost while keys
        # were WATCHed: Redis is down or stuck, not a job that changed.
        raise RedisConnectionError(f"cancel: {exc}") from exc
    if done:
        return None  # it has ended: a worker, or another cancel, stored its result
    return Found(bool(running), raw, attempts)


def _take_off_the_queue(
    pipe: Pipeline, job_id: str, queue_name: str, result: bytes, keep_result_s: float
) -> None:
    """Queue the commands that remove a job no worker runs, with `result` as its result."""
    in_progress = in_progress_key_prefix + job_id
    job_key = job_key_prefix + job_id
    pipe.zrem(queue_name, job_id)
    pipe.zrem(abort_jobs_ss, job_id)
    pipe.set(result_key_prefix + job_id, result, px=int(keep_result_s * 1000))
    # An enqueue of this id may be in flight (the caller may write its record before it
    # enqueues). ARQ's enqueue refuses an id that has a result, and WATCHes the job key while
    # it checks, so writing that key (and deleting it again) fails an enqueue that checked
    # before us too.
    pipe.set(job_key, b"cancelled")
    pipe.delete(job_key, retry_key_prefix + job_id)
    # Likewise a worker may have read this id from the queue before our ZREM and be about to
    # claim it: it WATCHes the in-progress key. Left alone, it would run the job, find no job
    # key and store "job expired" over our result.
    pipe.set(in_progress, b"cancelled")
    pipe.delete(in_progress)


def failed_result(
    job_id: str,
    function: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    attempts: int,
    enqueue_ms: int,
    error: BaseException,
    queue_name: str,
    serializer: Serializer,
) -> bytes:
    """The result ARQ would store for the job, failed with `error` now."""
    at = timestamp_ms()
    ref = f"{job_id}:{function}"
    fields = (function, tuple(args), kwargs, attempts, enqueue_ms, False, error, at, at, ref)
    result = serialize_result(*fields, queue_name, job_id, serializer=serializer)
    if result is None:  # ARQ's answer when it cannot serialize even the error
        raise TypeError(f"cannot store the result of job {job_id}")
    return result


@dataclass(frozen=True)
class End:
    """What Redis knows of a job: its stored result, or whether it is still live."""

    result: bytes | None  # ARQ's result, if the job has ended
    live: bool  # no result, but queued, deferred or running


async def ends(redis: ArqRedis, job_ids: list[str], queue_name: str) -> dict[str, End]:
    """Each job's End, in one round trip (what Job.result_info and Job.status read)."""
    # One transaction, not just one round trip: a job that finishes between its reads would
    # look "gone" (no result yet, no job key any more), and be marked lost.
    async with redis.pipeline(transaction=True) as pipe:
        for job_id in job_ids:
            pipe.get(result_key_prefix + job_id)
            pipe.exists(job_key_prefix + job_id)
            pipe.exists(in_progress_key_prefix + job_id)
            pipe.zscore(queue_name, job_id)
        replies = await pipe.execute()
    found = {}
    for n, job_id in enumerate(job_ids):
        result, job, running, score = replies[4 * n : 4 * n + 4]
        found[job_id] = End(result, bool(job and (running or score is not None)))
    return found
