"""Looking after the ledger: a cron job every few minutes, run once across all workers.

Each run first settles the unfinished rows the worker's hooks could not (reconcile). ARQ does
not call the hooks when a job exceeds max_tries, expires, cannot be decoded or is aborted
before it starts, and a worker that dies loses the writes it had not committed: either way
Redis holds a result that no row records, or no trace of a job the ledger still calls
unfinished. Then it prunes finished history past its retention. A run has a timeout like any
job, so it must end in time however far behind it is: it checks at most a budget of rows, and
the next run carries on where this one stopped.
"""

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.cron import CronJob, cron
from arq.jobs import DeserializationError, deserialize_result
from pydantic import BaseModel

from jobkit import arq_jobs

from .config import get_settings
from .jobs import FINAL, JobView, Status, deserialize, outcome, read_outcome
from .ledger import Ledger
from .tables import ATTEMPTS, JOBS, now
from .tasks import TASKS

# --8<-- [start:constants]
# Every few minutes; history is kept this long after a job ends.
MAINTENANCE_EVERY_MIN = 5
HISTORY_RETENTION_S = 30 * 24 * 3600
# Cron jobs keep no result by default; this one keeps its report (settled, pruned) an hour.
MAINTENANCE_KEEP_RESULT_S = 3600
# Each run checks at most this many unfinished rows, and prunes at most this many jobs and
# as many orphaned attempts, so it ends well inside its timeout however far behind it is
# (the chapter has what a run of that size takes). The next run carries on.
MAINTENANCE_ROW_BUDGET = 5_000
# An unfinished row that Redis has not heard of for this long was lost with Redis's data.
LOST_AFTER_S = 300
# An in_progress row past its task's timeout + this, that no worker holds, is stuck.
STUCK_GRACE_S = 15
# reconcile() looks this many unfinished rows up in Redis at a time, in one round trip.
RECONCILE_BATCH = 500
# Where in the unfinished rows the last run stopped (Redis: every worker's runs share it).
RECONCILE_CURSOR_KEY = "ledger:reconcile-after"
# --8<-- [end:constants]


# --8<-- [start:cron]
def every_few_minutes(job: Callable[..., Coroutine[Any, Any, Any]]) -> CronJob:
    """`job` as ARQ's cron job, at second 0 of every MAINTENANCE_EVERY_MIN-th minute."""
    return cron(
        job,
        minute=set(range(0, 60, MAINTENANCE_EVERY_MIN)),
        second=0,
        unique=True,  # one run per tick, however many workers
        timeout=get_settings().job_timeout_s,  # the worker's JOB_TIMEOUT_S, as any job
        keep_result=MAINTENANCE_KEEP_RESULT_S,
    )


async def maintain_ledger(ctx: dict[str, Any]) -> dict[str, int]:
    """The cron job: settle unfinished rows (reconcile, below), then prune old history."""
    # Idempotent, as a cron job must be: ARQ runs each tick once across all workers
    # (unique=True gives the run a fixed job id), but a crash can still repeat one.
    settled = await reconcile(ctx["ledger"], ctx["redis"], MAINTENANCE_ROW_BUDGET)
    return {"settled": settled, **await prune(ctx["ledger"])}


async def prune(ledger: Ledger) -> dict[str, int]:
    """Delete finished jobs (and their attempts) past HISTORY_RETENTION_S, oldest first, and
    attempts whose job has no row (earlier versions left them): MAINTENANCE_ROW_BUDGET each."""
    cutoff = now() - timedelta(seconds=HISTORY_RETENTION_S)
    old = sa.and_(JOBS.c.status.in_(FINAL), JOBS.c.finish_time < cutoff)
    oldest = sa.select(JOBS.c.job_id).where(old).order_by(JOBS.c.finish_time, JOBS.c.job_id)
    orphan = ~sa.exists().where(JOBS.c.job_id == ATTEMPTS.c.job_id)
    orphans = sa.select(ATTEMPTS.c.job_id).where(orphan).limit(MAINTENANCE_ROW_BUDGET)

    def delete(connection: sa.Connection) -> dict[str, int]:
        ids = connection.execute(oldest.limit(MAINTENANCE_ROW_BUDGET)).scalars().all()
        connection.execute(ATTEMPTS.delete().where(ATTEMPTS.c.job_id.in_(ids)))
        pruned = connection.execute(JOBS.delete().where(JOBS.c.job_id.in_(ids))).rowcount
        gone = ATTEMPTS.delete().where(ATTEMPTS.c.job_id.in_(orphans))
        return {"pruned": pruned, "orphaned_attempts_pruned": connection.execute(gone).rowcount}

    return await ledger.db.run(delete)


# --8<-- [end:cron]


# --8<-- [start:reconcile]
async def reconcile(ledger: Ledger, redis: ArqRedis, budget: int) -> int:
    """Settle up to `budget` unfinished rows against Redis; returns how many it settled.

    A row that Redis knows nothing about after LOST_AFTER_S was lost with Redis's data (a
    flush, a restart without persistence): it is marked failed. So, sooner, is a job "in
    progress" past its timeout that Redis no longer has.
    """
    queue_name = get_settings().queue_name
    settled = 0
    lost_before = now() - timedelta(seconds=LOST_AFTER_S)
    records = await rows_to_check(ledger, redis, budget)
    for start in range(0, len(records), RECONCILE_BATCH):
        # One Redis round trip per batch of rows, not one per row.
        batch = records[start : start + RECONCILE_BATCH]
        states = await record_ends(ledger, redis, [r.job_id for r in batch], queue_name)
        gone = [r for r in batch if states[r.job_id] == "gone"]
        failed = {r.job_id: why for r in gone if (why := why_failed(r, lost_before))}
        await asyncio.gather(
            *(
                ledger.update(job_id, status=Status.FAILED, error=error, finish_time=now())
                for job_id, error in failed.items()
            )
        )
        settled += list(states.values()).count("ended") + len(failed)
    await carry_on_after(redis, records, budget)
    await ledger.flush()
    return settled


# --8<-- [end:reconcile]


# --8<-- [start:pipeline]
async def record_ends(
    ledger: Ledger, redis: ArqRedis, job_ids: list[str], queue_name: str
) -> dict[str, str]:
    """Record how each job ended if Redis holds its result, reading all of them in one round
    trip (jobkit.arq_jobs.ends). Per job: "ended" (now recorded), "live" (queued or running
    in Redis) or "gone" (no trace)."""
    states: dict[str, str] = {}
    writes: list[Awaitable[Any]] = []
    for job_id, end in (await arq_jobs.ends(redis, job_ids, queue_name)).items():
        if end.result is None:
            states[job_id] = "live" if end.live else "gone"
            continue
        states[job_id] = "ended"
        try:
            info = deserialize_result(end.result, deserializer=deserialize)
        except DeserializationError:  # not JSON, so not ours (a planted pickle?): settle it
            error = "undecodable: its result in Redis is not JSON, so this app never wrote it"
            writes.append(
                ledger.update(job_id, status=Status.FAILED, error=error, finish_time=now())
            )
        else:
            writes.append(ledger.update(job_id, **outcome(info)))
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
    task = TASKS.get(record.function)
    limit = (task[0].timeout_s() if task else get_settings().job_timeout_s) + STUCK_GRACE_S
    started = record.start_time or record.enqueue_time
    if record.status == Status.IN_PROGRESS and started < now() - timedelta(seconds=limit):
        return f"stuck: its worker stopped and Redis no longer has it ({limit:.0f} s limit)"
    if record.enqueue_time < lost_before:
        return "lost: Redis no longer knows this job (flushed, or its result expired)"
    return None


# --8<-- [end:budget]


# --- The jobs page: the cron job's last runs, as Redis keeps their results ---
CRON_RUNS_SHOWN = 6  # the last half hour of ticks


class CronRun(BaseModel):
    job_id: str  # ARQ's id of a unique cron run: cron:<function>:<the tick, in ms>
    due: datetime
    status: str  # complete or failed; "no result": not run (yet), or its result has expired
    result: Any = None
    error: str | None = None
    finish_time: datetime | None = None


async def recent_runs(redis: ArqRedis, queue_name: str) -> list[CronRun]:
    """The cron job's last CRON_RUNS_SHOWN ticks, newest first (GET /cron). A run has no row
    in the ledger (it is not a job a client made), but its id is known from its tick, and
    Redis keeps its result for MAINTENANCE_KEEP_RESULT_S."""
    step_ms = MAINTENANCE_EVERY_MIN * 60_000
    last = int(now().timestamp() * 1000) // step_ms * step_ms
    runs = []
    for tick in range(last, last - CRON_RUNS_SHOWN * step_ms, -step_ms):
        job_id = f"cron:{maintain_ledger.__qualname__}:{tick}"
        ended = await read_outcome(redis, job_id, queue_name) or {"status": "no result"}
        fields = {key: ended.get(key) for key in ("status", "result", "error", "finish_time")}
        runs.append(CronRun(job_id=job_id, due=datetime.fromtimestamp(tick / 1000, UTC), **fields))
    return runs
