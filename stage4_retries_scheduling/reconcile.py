"""Settling unfinished rows against Redis: the first half of the cron job (maintenance.py).

ARQ does not call the job hooks when a job exceeds max_tries, expires, cannot be decoded or
is aborted before it starts, and a worker that dies loses the hooks' writes it had not
committed: either way Redis holds a result that no row records. GET /jobs/{id} records one
when asked (ledger.record_result_from_redis); reconcile() sweeps them, a run's share at a time.
"""

import asyncio
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import DeserializationError, deserialize_result

from .config import get_settings
from .jobs import FINAL, JobView, deserialize
from .ledger import Ledger
from .tables import JOBS, now
from .timeouts import timeout_s

# --8<-- [start:constants]
# An unfinished row that Redis has not heard of for this long was lost with Redis's data.
LOST_AFTER_S = 300
# An in_progress row past its task's timeout + this, that no worker holds, is stuck.
STUCK_GRACE_S = 15
# reconcile() looks this many unfinished rows up in Redis at a time, in one round trip.
RECONCILE_BATCH = 500
# Where in the unfinished rows the last run stopped (Redis: every worker's runs share it).
RECONCILE_CURSOR_KEY = "ledger:reconcile-after"
# --8<-- [end:constants]


# --8<-- [start:reconcile]
async def reconcile(ledger: Ledger, redis: ArqRedis, budget: int) -> int:
    """Settle up to `budget` unfinished rows against Redis; returns how many it settled.

    A row that Redis knows nothing about after LOST_AFTER_S was lost with Redis's data (a
    flush, a restart without persistence): it is marked failed. So, sooner, is a job "in
    progress" past its timeout that Redis no longer has.
    """
    queue_name, settled = get_settings().queue_name, 0
    lost_before = now() - timedelta(seconds=LOST_AFTER_S)
    records = await rows_to_check(ledger, redis, budget)
    for start in range(0, len(records), RECONCILE_BATCH):
        # One Redis round trip per batch of rows, where asking row by row cost ~2.4 ms each.
        batch = records[start : start + RECONCILE_BATCH]
        states = await record_results_from_redis(
            ledger, redis, [r.job_id for r in batch], queue_name
        )
        gone = [r for r in batch if states[r.job_id] == "gone"]
        failed = {r.job_id: why for r in gone if (why := why_failed(r, lost_before))}
        await asyncio.gather(
            *(
                ledger.update(job_id, status="failed", error=error, finish_time=now())
                for job_id, error in failed.items()
            )
        )
        settled += list(states.values()).count("ended") + len(failed)
    await carry_on_after(redis, records, budget)
    await ledger.flush()
    return settled


# --8<-- [end:reconcile]


# --8<-- [start:pipeline]
async def record_results_from_redis(
    ledger: Ledger, redis: ArqRedis, job_ids: list[str], queue_name: str
) -> dict[str, str]:
    """ledger.record_result_from_redis for many jobs, in one Redis round trip. Per job:
    "ended" (now recorded), "live" (queued or running in Redis) or "gone" (no trace)."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:  # what Job.result_info, status and info read, in one go
            pipe.get(result_key_prefix + job_id)
            pipe.exists(job_key_prefix + job_id)
            pipe.exists(in_progress_key_prefix + job_id)
            pipe.zscore(queue_name, job_id)
        replies = await pipe.execute()
    states: dict[str, str] = {}
    writes: list[Awaitable[Any]] = []
    for n, job_id in enumerate(job_ids):
        result, job, running, score = replies[4 * n : 4 * n + 4]
        if result is None:
            states[job_id] = "live" if job and (running or score is not None) else "gone"
            continue
        states[job_id] = "ended"
        try:
            info = deserialize_result(result, deserializer=deserialize)
        except DeserializationError:  # not JSON, so not ours (a planted pickle?): settle it
            error = "undecodable: its result in Redis is not JSON, so this app never wrote it"
            writes.append(ledger.update(job_id, status="failed", error=error, finish_time=now()))
        else:
            writes.append(ledger.record_outcome(job_id, info))
    await asyncio.gather(*writes)  # writes that arrive together share one transaction
    return states


# --8<-- [end:pipeline]


# --8<-- [start:budget]
async def rows_to_check(ledger: Ledger, redis: ArqRedis, budget: int) -> list[JobView]:
    """This run's share of the unfinished rows: at most `budget`, oldest first, after the
    last row the run before checked."""
    # Carrying on, rather than starting from the oldest each time: rows that wait
    # legitimately (deferred for days) cannot hide the rest for ever.
    query = JOBS.select().where(JOBS.c.status.not_in(FINAL))
    saved = await redis.get(RECONCILE_CURSOR_KEY)
    if saved is not None:
        when, job_id = saved.decode().split("|", 1)
        after = datetime.fromisoformat(when)
        same_time = sa.and_(JOBS.c.enqueue_time == after, JOBS.c.job_id > job_id)
        query = query.where(sa.or_(JOBS.c.enqueue_time > after, same_time))
    query = query.order_by(JOBS.c.enqueue_time, JOBS.c.job_id).limit(budget)
    return await ledger.db.read(query, JobView.model_validate)


async def carry_on_after(redis: ArqRedis, checked: list[JobView], budget: int) -> None:
    """Where the next run starts: after the last row this one checked, or from the oldest."""
    if len(checked) < budget:  # saw them all: the next run starts again
        await redis.delete(RECONCILE_CURSOR_KEY)
    else:
        last = checked[-1]
        await redis.set(RECONCILE_CURSOR_KEY, f"{last.enqueue_time.isoformat()}|{last.job_id}")


def why_failed(record: JobView, lost_before: datetime) -> str | None:
    """Why a row whose job Redis has no trace of has failed, or None if it may yet appear."""
    limit = timeout_s(record.function) + STUCK_GRACE_S
    started = record.start_time or record.enqueue_time
    if record.status == "in_progress" and started < now() - timedelta(seconds=limit):
        return f"stuck: its worker stopped and Redis no longer has it ({limit:.0f} s limit)"
    if record.enqueue_time < lost_before:
        return "lost: Redis no longer knows this job (flushed, or its result expired)"
    return None


# --8<-- [end:budget]
