"""The ARQ worker: a separate process that takes jobs from Redis and runs them.

`make run STAGE=2` starts it with the API; by hand, with REDIS_URL set to the API's Redis:
    arq stage2_arq_basic.worker.WorkerSettings
"""

from jobkit import redis_pool

from . import jobs
from .config import get_settings
from .tasks import TASKS

# --8<-- [start:constants]
# A job running longer than this is cancelled and fails. It also bounds crash recovery: ARQ
# re-runs a dead worker's job only once its "in progress" key expires, this timeout + 10 s
# after the start (ARQ's default, 300 s, would mean 5 minutes). JOB_TIMEOUT_S sets it.
JOB_TIMEOUT_S = get_settings().job_timeout_s
# How long a result stays in Redis. After that GET /jobs/{id} answers 404: Redis is a
# queue, not a record (stage 3 keeps the history in a database).
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


# --8<-- [end:settings]
