"""How a job stops: a timeout per task, a graceful shutdown, and work in a thread that stops too.

ARQ stops a job by cancelling its asyncio task: when it runs past its timeout, when
`DELETE /jobs/{id}` aborts it (cancel.py), and when the worker shuts down (the job then goes
back in the queue). worker.task_functions gives each task its timeout from here.
"""

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from .config import get_settings

T = TypeVar("T")

# --8<-- [start:timeouts]
# Per task: how long one run may take, capped at the worker's JOB_TIMEOUT_S. A timed-out job
# fails and is not retried (ARQ's rule, and ours): a task that times out is stuck or too big,
# and running it again costs the same. fetch bounds each HTTP request itself and retries those
# timeouts on its own terms, so its job timeout only catches a hung task. The cap matters:
# ARQ holds a dead worker's jobs for the LONGEST timeout of any task + 10 s, so one slow
# task's timeout would delay crash recovery for every job.
TASK_TIMEOUTS_S: dict[str, float] = {
    **{"add": 5, "divide": 5, "crunch": 20, "wait": 25, "fetch": 25},
    "report": 25,  # the API refuses a report too long for it (tasks.ReportArgs)
}
# Graceful shutdown (SIGTERM, a deploy): stop taking jobs, give running ones this long to
# finish, then cancel them back into the queue. Below `make run`'s 10 s before SIGKILL.
JOB_COMPLETION_WAIT_S = 8


def timeout_s(task: str) -> float:
    """The task's own timeout. The API reads it too: it must not import the worker."""
    job_timeout_s = get_settings().job_timeout_s  # the worker's JOB_TIMEOUT_S
    return min(TASK_TIMEOUTS_S.get(task, job_timeout_s), job_timeout_s)


# --8<-- [end:timeouts]


# --8<-- [start:stoppable]
async def in_stoppable_thread(work: Callable[[threading.Event], T]) -> T:
    """Run the blocking `work(stop)` in a thread that ends with the job.

    Cancelled (DELETE, its timeout, a shutdown), an awaiting job would end at once while its
    thread burned on for seconds, its slot already given to the next job: Python cannot kill
    a thread. So `work` checks `stop` between slices, and the job ends only once its thread
    has. (The alternative, a process per job, can be killed, at the price of a process start
    per job.)
    """
    stop = threading.Event()
    thread = asyncio.get_running_loop().run_in_executor(None, work, stop)
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([thread])
        raise


# --8<-- [end:stoppable]
