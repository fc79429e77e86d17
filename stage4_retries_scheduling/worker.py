"""The ARQ worker: a separate process that takes jobs from Redis and runs them.

Stage 4's worker gives each task its own timeout (tasks.Args), records every try in the
attempt log (its hooks, below), stops a running job on DELETE /jobs/{id} (cancel.py), and
runs a cron job that looks after the ledger (maintenance.py).

`make run STAGE=4` starts it with the API; by hand, with REDIS_URL set to the API's Redis:
    arq stage4_retries_scheduling.worker.WorkerSettings
"""

import asyncio
from typing import Any

from arq.worker import Function, func

from jobkit import logs, observe, pinned_http, redis_pool

from . import jobs, maintenance
from .config import get_settings
from .fetch import FetchFailed
from .jobs import KEEP_RESULT_S, Status, read_outcome
from .ledger import Ledger
from .tables import now
from .tasks import TASKS

# --8<-- [start:constants]
# A job running longer than this is cancelled and fails. It also bounds crash recovery: ARQ
# re-runs a dead worker's job only once its "in progress" key expires, this timeout + 10 s
# after the start (ARQ's default, 300 s, would mean 5 minutes). JOB_TIMEOUT_S sets it.
JOB_TIMEOUT_S = get_settings().job_timeout_s
# How often an idle worker asks Redis for new jobs. ARQ's 0.5 s default adds ~250 ms of
# queue wait on average; 0.05 s makes pick-up near-instant for 20 cheap queries a second.
POLL_DELAY_S = 0.05
# How many jobs one worker runs at once (on one event loop; more processes scale further).
# MAX_JOBS sets it; the API reads it too, for the longest crunch it accepts (tasks.py).
MAX_JOBS = get_settings().max_jobs
# How often the worker writes its health-check key (`arq --check` reads it). ARQ's default
# of an hour lets a dead worker look healthy for an hour.
HEALTH_CHECK_INTERVAL_S = 10
# Graceful shutdown (SIGTERM, a deploy): stop taking jobs, give running ones this long to
# finish, then cancel them back into the queue. Below `make run`'s 10 s before SIGKILL.
JOB_COMPLETION_WAIT_S = 8
# --8<-- [end:constants]


# --8<-- [start:task_functions]
def task_functions() -> list[Function]:
    """Each task with its own timeout and, if its model has one, its own cap on tries
    (tasks.Args: arq pairs them in func(f, timeout=, max_tries=))."""
    return [
        func(function, name=name, timeout=model.timeout_s(), max_tries=model.max_tries())
        for name, (model, function) in TASKS.items()
    ]


# --8<-- [end:task_functions]


# --8<-- [start:hooks]
async def startup(ctx: dict[str, Any]) -> None:
    # write_behind: a hook doesn't wait for its row to be committed, so a job never waits
    # for the database (jobkit.db). A worker that dies loses what it had not committed; Redis
    # still has the results, and the cron job records them.
    ctx["ledger"] = Ledger(get_settings().database_url, write_behind=True)
    await asyncio.to_thread(ctx["ledger"].create_schema)
    # A heartbeat of its own, so that GET /queue and /health can tell which workers are
    # alive (ARQ's one health-check key per queue is overwritten by every worker); and, as
    # the settings ask, this worker's own /metrics, a span per try, JSON logs (jobkit.observe).
    settings = get_settings()
    await observe.start_worker(
        ctx,
        settings.queue_name,
        metrics_port=settings.worker_metrics_port,
        metrics_host=settings.worker_metrics_host,
        tracing=settings.tracing,
        json_logs=settings.json_logs,
    )
    logs.expect_failures(FetchFailed)  # a 404 is an answer, not a crash: one line, no traceback
    # For fetch: its settings, and one HTTP client per worker process for every job.
    ctx["settings"] = get_settings()
    ctx["http"] = pinned_http.make_client(ctx["settings"].fetch_timeout_s)
    # Past one machine: after a failover, leave (as on SIGTERM) for the supervisor to start
    # this worker again on the new primary; ARQ's connections never move by themselves.
    ctx["watch"] = redis_pool.leave_when_primary_moves(ctx["redis"])


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get("watch"):
        ctx["watch"].cancel()
    await observe.stop_worker(ctx)
    await ctx["http"].aclose()
    await ctx["ledger"].flush()
    ctx["ledger"].close()


async def job_started(ctx: dict[str, Any]) -> None:
    # A job's start_time is its first try's; each try's start goes to its attempt row.
    started = ctx["attempt_started"] = now()
    first = {"start_time": started} if ctx["job_try"] == 1 else {}
    await ctx["ledger"].update(
        ctx["job_id"], status=Status.IN_PROGRESS, attempts=ctx["job_try"], **first
    )


async def job_ended(ctx: dict[str, Any]) -> None:
    # after_job_end, not on_job_end: it runs once ARQ has written the result to Redis, so
    # the ledger copies exactly what Redis holds (result or error, times, attempts). Neither
    # hook runs when ARQ fails a job without starting it: the cron job records those.
    ended = await read_outcome(ctx["redis"], ctx["job_id"], get_settings().queue_name)
    await ctx["ledger"].update(ctx["job_id"], **(ended or waiting(ctx)))
    await ctx["ledger"].add_attempt(this_try(ctx, ended))


def waiting(ctx: dict[str, Any]) -> dict[str, Any]:
    """The job's row after a try that ended without a result: it will run again."""
    if retry := ctx.get("retry"):  # the task raised Retry and said why (fetch.retry_later)
        return {"status": Status.DEFERRED, "error": retry["error"]}
    return {"status": Status.QUEUED}  # cancelled by a worker shutdown: back in the queue


def this_try(ctx: dict[str, Any], ended: dict[str, Any] | None) -> dict[str, Any]:
    """The attempt-log row of the try that just ended: how it ended or, for a retry, why and
    when the next try is due. (ARQ keeps only a job's last try.)"""
    attempt = {
        "job_id": ctx["job_id"],
        "attempt": ctx["job_try"],
        "start_time": ctx["attempt_started"],
        "finish_time": now(),
    }
    if ended:  # with the result's own times, as the job's row has them
        outcome = {"outcome": ended["status"], "error": ended["error"]}
        times = {"start_time": ended.get("start_time", attempt["start_time"])}
        return attempt | outcome | times | {"finish_time": ended["finish_time"]}
    if retry := ctx.get("retry"):
        return attempt | {"outcome": "retrying", **retry}
    return attempt | {"outcome": "interrupted"}  # a worker shutdown: it will run again


# --8<-- [end:hooks]


# --8<-- [start:settings]
class WorkerSettings:
    # ARQ reads these attributes from this class's own __dict__, so a subclass would lose
    # them: a second worker configuration copies the ones it needs instead.
    functions = task_functions()
    cron_jobs = [maintenance.every_few_minutes(maintenance.maintain_ledger)]
    # ARQ's RedisSettings for a redis:// URL, or for a Sentinel-watched primary (jobkit)
    redis_settings = redis_pool.arq_settings(get_settings().redis_url)
    queue_name = get_settings().queue_name
    job_serializer = jobs.serialize
    job_deserializer = jobs.deserialize
    # A Sentinel-watched primary: jobkit's pool, with the deadlines ARQ's own lacks (None for
    # a redis:// URL: ARQ connects with redis_settings)
    redis_pool = redis_pool.arq_pool(
        get_settings().redis_url, queue_name, job_serializer, job_deserializer
    )
    job_timeout = JOB_TIMEOUT_S
    keep_result = KEEP_RESULT_S
    poll_delay = POLL_DELAY_S
    max_jobs = MAX_JOBS
    health_check_interval = HEALTH_CHECK_INTERVAL_S
    job_completion_wait = JOB_COMPLETION_WAIT_S  # graceful shutdown
    allow_abort_jobs = True  # DELETE /jobs/{id} of a running job: cancel.py
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started
    after_job_end = job_ended


# --8<-- [end:settings]
