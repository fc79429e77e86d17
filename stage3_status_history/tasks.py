"""The work, as ARQ job functions, and the arguments each one accepts.

The API only enqueues a job by name; the worker process imports this module and runs it.
"""

import asyncio
import math
import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .config import get_settings

MAX_INT = 10**12  # keeps sums exact and JSON numbers small
MAX_WAIT_S = 20.0
MAX_STEPS = 100
MAX_STEP_S = 2.0
# A report may fill this share of its timeout; the rest is headroom for the progress
# writes and a busy worker.
REPORT_TIMEOUT_SHARE = 0.8


def report_timeout_s() -> float:
    return get_settings().job_timeout_s  # the worker's JOB_TIMEOUT_S


def report_max_s() -> float:
    """The longest report (steps * step_seconds) that its job timeout lets finish."""
    return report_timeout_s() * REPORT_TIMEOUT_SHARE


Int = Annotated[int, Field(ge=-MAX_INT, le=MAX_INT)]
Finite = Annotated[float, Field(ge=-MAX_INT, le=MAX_INT)]


class Args(BaseModel):
    # strict: "5" is not 5; forbid: a misspelt field is an error, not silently ignored.
    # allow_inf_nan=False: Python's JSON parser accepts NaN, Infinity and 1e309 (= inf).
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


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
    return get_settings().job_timeout_s  # the worker's JOB_TIMEOUT_S


def crunch_max_ms() -> int:
    """The longest crunch (in CPU ms) of which a worker can run MAX_JOBS at once in time."""
    return int(crunch_timeout_s() * CRUNCH_TIMEOUT_SHARE / get_settings().max_jobs * 1000)


class CrunchArgs(Args):
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
    seconds: float = Field(1.0, ge=0, le=MAX_WAIT_S, description="How long to sleep")


class ReportArgs(Args):
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


def burn_cpu(ms: int) -> int:
    """Pure-Python busy work for about `ms` milliseconds of CPU, never releasing the GIL itself."""
    # This thread's CPU time, not the wall clock: crunches that share the GIL in threads
    # each still do their full amount of work, as real CPU-bound jobs would.
    deadline = time.thread_time() + ms / 1000
    loops = 0
    while time.thread_time() < deadline:
        sum(i * i for i in range(1_000))
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


async def crunch(ctx: dict[str, Any], ms: int) -> int:
    """Burn about `ms` milliseconds of CPU in the worker process."""
    # The API process is not involved any more, so its event loop stays free whatever this
    # costs. Inside the worker we still hand the CPU work to a thread: the worker's own loop
    # keeps polling, heart-beating and timing out jobs while the thread runs.
    return await asyncio.to_thread(burn_cpu, ms)


async def wait(ctx: dict[str, Any], seconds: float) -> float:
    """Sleep for `seconds` (I/O-like work)."""
    await asyncio.sleep(seconds)  # I/O-like: awaits, so the loop serves others meanwhile
    return seconds


# --8<-- [start:progress]
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


# --8<-- [end:progress]


# name -> (argument model, function). The API makes one POST /tasks/<name> route per entry.
# The worker registers the functions.
TASKS: dict[str, tuple[type[Args], Callable[..., Any]]] = {
    "add": (AddArgs, add),
    "divide": (DivideArgs, divide),
    "crunch": (CrunchArgs, crunch),
    "wait": (WaitArgs, wait),
    "report": (ReportArgs, report),
}
