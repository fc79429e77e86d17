"""Looking after the ledger: a cron job every few minutes, run once across all workers.

Each run settles the unfinished rows the worker's hooks could not (worker.reconcile) and
prunes finished history past its retention (worker.maintain_ledger). A run has a timeout like
any job, so it must end in time however far behind it is: it checks at most a budget of
rows, and the next run carries on where this one stopped.
"""

from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from arq.connections import ArqRedis
from arq.cron import CronJob, cron

from .config import get_settings
from .jobs import JobView
from .ledger import Ledger
from .tables import now
from .timeouts import timeout_s

# --8<-- [start:constants]
# Every few minutes; history is kept this long after a job ends.
MAINTENANCE_EVERY_MIN = 5
HISTORY_RETENTION_S = 30 * 24 * 3600
# Cron jobs keep no result by default; this one keeps its report (settled, pruned) an hour.
MAINTENANCE_KEEP_RESULT_S = 3600
# Each run checks at most this many unfinished rows, and prunes at most this many jobs and
# as many orphaned attempts, so it ends well inside its timeout however far behind it is
# (about 1 s on 2 busy cores; see the chapter). The next run carries on.
MAINTENANCE_ROW_BUDGET = 5_000
# Where in the unfinished rows the last run stopped (Redis: every worker's runs share it).
RECONCILE_CURSOR_KEY = "ledger:reconcile-after"
# An in_progress row past its task's timeout + this, that no worker holds, is stuck.
STUCK_GRACE_S = 15
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


async def prune(ledger: Ledger) -> dict[str, int]:
    """Delete finished jobs past HISTORY_RETENTION_S, and attempts whose job has no row."""
    cutoff = now() - timedelta(seconds=HISTORY_RETENTION_S)
    pruned = await ledger.prune(finished_before=cutoff, limit=MAINTENANCE_ROW_BUDGET)
    orphans = await ledger.prune_orphans(limit=MAINTENANCE_ROW_BUDGET)
    return {"pruned": pruned, "orphaned_attempts_pruned": orphans}


# --8<-- [end:cron]


# --8<-- [start:budget]
async def rows_to_check(ledger: Ledger, redis: ArqRedis) -> list[JobView]:
    """This run's share of the unfinished rows: at most MAINTENANCE_ROW_BUDGET, oldest first,
    after the last row the run before checked."""
    # Carrying on, rather than starting from the oldest each time: rows that wait
    # legitimately (deferred for days) cannot hide the rest for ever.
    saved = await redis.get(RECONCILE_CURSOR_KEY)
    after = None
    if saved is not None:
        when, job_id = saved.decode().split("|", 1)
        after = datetime.fromisoformat(when), job_id
    return await ledger.unfinished(MAINTENANCE_ROW_BUDGET, after=after)


async def carry_on_after(redis: ArqRedis, checked: list[JobView]) -> None:
    """Where the next run starts: after the last row this one checked, or from the oldest."""
    if len(checked) < MAINTENANCE_ROW_BUDGET:  # saw them all: the next run starts again
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
