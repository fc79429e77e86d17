"""The work, as ARQ job functions, and the arguments each one accepts.

The API only enqueues a job by name; the worker process imports this module and runs it.
"""

import asyncio
import math
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, ClassVar, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobkit.http import invalid
from jobkit.ssrf import LOOKUP_TIMEOUT_S, LookupsBusy, UnsafeURL, check_url

from .config import get_settings
from .fetch import fetch

T = TypeVar("T")


# --8<-- [start:args]
class Args(BaseModel):
    # strict: "5" is not 5; forbid: a misspelt field is an error, not silently ignored.
    # allow_inf_nan=False: Python's JSON parser accepts NaN, Infinity and 1e309 (= inf).
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    # What generic code needs to know about a task besides its arguments: the route and the
    # worker ask the task's model, rather than test `if name == "fetch"`.

    # How long one run may take (ARQ's func(timeout=)), capped at the worker's JOB_TIMEOUT_S.
    # A timed-out job fails and is not retried (ARQ's rule, and ours): a task that times out
    # is stuck or too big, and running it again costs the same. The cap matters: ARQ holds a
    # dead worker's jobs for the LONGEST timeout of any task + 10 s, so one slow task's
    # timeout would delay crash recovery for every job.
    TIMEOUT_S: ClassVar[float] = 5

    @classmethod
    def timeout_s(cls) -> float:
        """This task's timeout, beside its cap on tries (ARQ pairs them: func(f, timeout=,
        max_tries=)). The API reads it too, for its limits: it must not import the worker."""
        return min(cls.TIMEOUT_S, get_settings().job_timeout_s)  # the worker's JOB_TIMEOUT_S

    async def check_before_enqueue(self, client: str) -> None:
        """Checks that need I/O, which a validator cannot make: raise jobkit.http.invalid (422).
        `client`: who asks (deps.ClientDep), for checks that share something between clients."""

    @classmethod
    def max_tries(cls) -> int | None:
        """ARQ's cap on this task's tries, every pick-up counted; None: ARQ's default, 5."""
        return None


# --8<-- [end:args]


# --8<-- [start:limits]
MAX_INT = 10**12  # keeps sums exact and JSON numbers small
MAX_WAIT_S = 20.0
MAX_STEPS = 100
MAX_STEP_S = 2.0
# A report may fill this share of its timeout; the rest is headroom for the progress
# writes and a busy worker.
REPORT_TIMEOUT_SHARE = 0.8


def report_timeout_s() -> float:
    return ReportArgs.timeout_s()  # its own timeout, the one the worker gives it


def report_max_s() -> float:
    """The longest report (steps * step_seconds) that its job timeout lets finish."""
    return report_timeout_s() * REPORT_TIMEOUT_SHARE


Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
Finite = Annotated[float, Field(ge=-MAX_INT, le=MAX_INT)]


class AddArgs(Args):
    x: Int
    y: Int


class DivideArgs(Args):
    x: Finite
    y: Finite


# A crunch shares its worker's core with every other crunch the worker runs at once (their
# threads share one GIL), up to MAX_JOBS of them, and each must still end within its job
# timeout. So together they may fill this share of it; the rest is headroom for a machine
# whose other processes take CPU from the worker.
CRUNCH_TIMEOUT_SHARE = 0.5


def crunch_timeout_s() -> float:
    return CrunchArgs.timeout_s()  # its own timeout, the one the worker gives it


def crunch_max_ms() -> int:
    """The longest crunch (in CPU ms) of which a worker can run MAX_JOBS at once in time."""
    return int(crunch_timeout_s() * CRUNCH_TIMEOUT_SHARE / get_settings().max_jobs * 1000)


class CrunchArgs(Args):
    TIMEOUT_S = 20
    ms: int = Field(200, ge=1, description="CPU time to burn, in milliseconds")

    @field_validator("ms")
    @classmethod
    def fits_its_timeout(cls, ms: int) -> int:
        # Refused now, with a 422 that says why, rather than a 202 for a job that times out
        # whenever other clients' crunches run beside it.
        if ms > (longest := crunch_max_ms()):
            raise ValueError(
                f"a crunch may burn at most {longest} ms of CPU: a worker runs up to "
                f"{get_settings().max_jobs} at once, on one core, each within its "
                f"{crunch_timeout_s():g} s job timeout"
            )
        return ms


class WaitArgs(Args):
    TIMEOUT_S = 25
    seconds: float = Field(1.0, ge=0, le=MAX_WAIT_S, description="How long to sleep")


class ReportArgs(Args):
    TIMEOUT_S = 25  # a report too long for it is refused (fits_its_timeout)
    steps: int = Field(10, ge=1, le=MAX_STEPS, description="How many steps the work takes")
    step_seconds: float = Field(0.5, ge=0, le=MAX_STEP_S, description="How long each step takes")

    @model_validator(mode="after")
    def fits_its_timeout(self) -> "ReportArgs":
        # Refused now, with a 422 that says why, rather than a 202 for a job that is bound
        # to time out half a minute later.
        total = self.steps * self.step_seconds
        longest = report_max_s()
        if total > longest:
            raise ValueError(
                f"steps * step_seconds is {total:g} s; a report may take at most {longest:g} s "
                f"({REPORT_TIMEOUT_SHARE:.0%} of its {report_timeout_s():g} s job timeout)"
            )
        return self


# --8<-- [end:limits]


# --8<-- [start:fetch_args]
class FetchArgs(Args):
    # fetch bounds each HTTP request itself and retries those timeouts on its own terms, so
    # its job timeout only catches a hung task.
    TIMEOUT_S = 25
    url: str = Field(max_length=2048, examples=["https://example.org/"])

    async def check_before_enqueue(self, client: str) -> None:
        # Resolve and check the host now (the SSRF guard, fetch.get_checked): a refused URL is the
        # client's error, a 422, not a job that fails later. The worker checks again before
        # each request, as the name may resolve differently by then.
        try:
            await check_url(self.url, get_settings().fetch_allowlist_networks, client)
        except UnsafeURL as exc:
            raise invalid(("body", "url"), f"URL refused: {exc}") from None
        except LookupsBusy as exc:  # no thread to look the name up with: ours to fix, not theirs
            status = 429 if exc.client_share else 503
            retry_after = {"Retry-After": f"{LOOKUP_TIMEOUT_S:.0f}"}
            raise HTTPException(status, f"Try again shortly: {exc}", headers=retry_after) from None

    @classmethod
    def max_tries(cls) -> int:
        # fetch counts its own tries (fetch.py): ARQ's cap must not stop it first.
        return get_settings().fetch_max_tries


# --8<-- [end:fetch_args]


def burn_cpu(ms: int, stop: threading.Event) -> int:
    """Pure-Python busy work for about `ms` milliseconds of CPU, or until `stop` is set."""
    # This thread's CPU time, not the wall clock: crunches that share the GIL in threads
    # each still do their full amount of work, as real CPU-bound jobs would.
    deadline = time.thread_time() + ms / 1000
    loops = 0
    while time.thread_time() < deadline and not stop.is_set():
        sum(i * i for i in range(1_000))  # a slice of well under a millisecond
        loops += 1
    return loops


# ARQ calls every job as `await f(ctx, **kwargs)`: `ctx` holds the worker's Redis pool and
# the job's id and try number. Jobs must be `async def`; ARQ refuses plain functions.
# ARQ runs a job at least once, so every job must be safe to run twice. These are: they
# only compute, report progress and return.


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    """Add two integers."""
    return x + y


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    """Divide x by y; y = 0 fails, and the failure is recorded with the job."""
    quotient = x / y
    if not math.isfinite(quotient):  # 1e12 / 1e-300 is inf, and JSON has no inf
        raise OverflowError(f"{x} / {y} is not a finite number")
    return quotient


# --8<-- [start:crunch]
async def crunch(ctx: dict[str, Any], ms: int) -> int:
    """Burn about `ms` milliseconds of CPU in the worker process."""
    # The API process is not involved any more, so its event loop stays free whatever this
    # costs. Inside the worker we still hand the CPU work to a thread: the worker's own loop
    # keeps polling, heart-beating and timing out jobs while the thread runs.
    # A thread that stops when the job is cancelled, though: in_stoppable_thread says why.
    return await in_stoppable_thread(partial(burn_cpu, ms))


# --8<-- [end:crunch]


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


async def wait(ctx: dict[str, Any], seconds: float) -> float:
    """Sleep for `seconds` (I/O-like work)."""
    await asyncio.sleep(seconds)  # I/O-like: awaits, so the loop serves others meanwhile
    return seconds


async def set_progress(ctx: dict[str, Any], percent: int, message: str | None = None) -> None:
    """Record how far the job has got; GET /jobs/{id}, its event stream and the page show it."""
    # The worker put its ledger in ctx (worker.startup). Each call is one small UPDATE, so
    # report every step of slow work, not every item of a tight loop.
    percent = max(0, min(100, percent))
    await ctx["ledger"].report_progress(ctx["job_id"], percent, message)


async def report(ctx: dict[str, Any], steps: int, step_seconds: float) -> int:
    """Work through `steps` steps of `step_seconds` each, reporting progress after each one."""
    for step in range(1, steps + 1):
        await asyncio.sleep(step_seconds)  # stands for one slice of real work
        await set_progress(ctx, step * 100 // steps, f"step {step} of {steps}")
    return steps


# name -> (argument model, function). The API makes one POST /tasks/<name> route per entry.
# The worker registers the functions.
TASKS: dict[str, tuple[type[Args], Callable[..., Any]]] = {
    "add": (AddArgs, add),
    "divide": (DivideArgs, divide),
    "crunch": (CrunchArgs, crunch),
    "wait": (WaitArgs, wait),
    "report": (ReportArgs, report),
    "fetch": (FetchArgs, fetch),
}
