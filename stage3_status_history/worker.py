"""The ARQ worker: a separate process that takes jobs from Redis and runs them.

`make run STAGE=3` starts it with the API; by hand, with REDIS_URL set to the API's Redis:
    arq stage3_status_history.worker.WorkerSettings
"""

import asyncio
from typing import Any

from jobkit import heartbeat, redis_pool

from . import jobs
from .config import get_settings
from .jobs import Status, read_outcome
from .ledger import Ledger
from .tables import now
from .tasks import TASKS

# --8<-- [start:constants]
# A job running longer than this is cancelled and fails. It also bounds crash recovery: ARQ
# re-runs a dead worker's job only once its "in progress" key expires, this timeout + 10 s
# after the start (ARQ's default, 300 s, would mean 5 minutes). JOB_TIMEOUT_S sets it.
JOB_TIMEOUT_S = get_settings().job_timeout_s
# How long a result stays in Redis. After that GET /jobs/{id} answers from the ledger:
# Redis is a queue, not a record.
KEEP_RESULT_S = 3600
# How often an idle worker asks Redis for new jobs. ARQ's 0.5 s default adds ~250 ms of
# queue wait on average; 0.05 s makes pick-up near-instant for 20 cheap queries a second.
POLL_DELAY_S = 0.05
# How many jobs one worker runs at once (on one event loop; more processes scale further).
# MAX_JOBS sets it; the API reads it too, for the longest crunch it accepts (tasks.py).
MAX_JOBS = get_settings().max_jobs
# How often the worker writes its health-check key (`arq --check` reads it). ARQ's default
# of an hour lets a dead worker look healthy for an hour.
HEALTH_CHECK_INTERVAL_S = 10
# --8<-- [end:constants]


# --8<-- [start:hooks]
async def startup(ctx: dict[str, Any]) -> None:
    # write_behind: a hook doesn't wait for its row to be committed, so a job never waits
    # for the database (jobkit.db). A worker that dies loses what it had not committed; Redis
    # still has the result, and GET /jobs/{id} records it from there.
    ctx["ledger"] = Ledger(get_settings().database_url, write_behind=True)
    await asyncio.to_thread(ctx["ledger"].create_schema)
    # A heartbeat of its own, so that GET /queue and /health can tell which workers are
    # alive (ARQ's one health-check key per queue is overwritten by every worker).
    await heartbeat.start(ctx, get_settings().queue_name)


async def shutdown(ctx: dict[str, Any]) -> None:
    await heartbeat.stop(ctx)
    await ctx["ledger"].flush()
    ctx["ledger"].close()


async def job_started(ctx: dict[str, Any]) -> None:
    await ctx["ledger"].update(
        ctx["job_id"], status=Status.IN_PROGRESS, attempts=ctx["job_try"], start_time=now()
    )


async def job_ended(ctx: dict[str, Any]) -> None:
    # after_job_end, not on_job_end: it runs once ARQ has written the result to Redis, so
    # the ledger copies exactly what Redis holds (result or error, times, attempts). Neither
    # hook runs when ARQ fails a job without starting it: GET /jobs/{id} shows those from
    # Redis, and stage 4's cron job records them.
    ended = await read_outcome(ctx["redis"], ctx["job_id"], get_settings().queue_name)
    # No result: the try was cancelled by a worker shutdown, and the job will run again.
    await ctx["ledger"].update(ctx["job_id"], **(ended or {"status": Status.QUEUED}))


# --8<-- [end:hooks]


# --8<-- [start:settings]
class WorkerSettings:
    # ARQ reads these attributes from this class's own __dict__, so a subclass would lose
    # them: a second worker configuration copies the ones it needs instead.
    functions = [function for _, function in TASKS.values()]
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
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started
    after_job_end = job_ended


# --8<-- [end:settings]
