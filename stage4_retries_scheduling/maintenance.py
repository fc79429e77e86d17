"""Looking after the ledger: a cron job every few minutes, run once across all workers.

Each run settles the unfinished rows the worker's hooks could not (reconcile.py), then
prunes finished history past its retention. A run has a timeout like any job, so it must end
in time however far behind it is: it checks at most a budget of rows, and the next run
carries on where this one stopped.
"""

from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from arq.cron import CronJob, cron

from .config import get_settings
from .jobs import FINAL
from .ledger import Ledger
from .reconcile import reconcile
from .tables import ATTEMPTS, JOBS, now

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
    """The cron job: settle unfinished rows (reconcile.py), then prune old history."""
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
