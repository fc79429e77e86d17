"""The work, as plain functions, and the arguments each one accepts.

In this stage a task is an ordinary function that FastAPI calls after sending the response.
Its result has nowhere to go but the log.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("tasks")

MAX_INT = 10**12  # keeps sums exact and JSON numbers small
MAX_CRUNCH_MS = 5_000
MAX_WAIT_S = 20.0

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


class CrunchArgs(Args):
    ms: int = Field(200, ge=1, le=MAX_CRUNCH_MS, description="CPU time to burn, in milliseconds")


class WaitArgs(Args):
    seconds: float = Field(1.0, ge=0, le=MAX_WAIT_S, description="How long to sleep")


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


def add(x: int, y: int) -> int:
    """Add two integers."""
    result = x + y
    log.info("add(%s, %s) = %s", x, y, result)
    return result


# --8<-- [start:divide]
def divide(x: float, y: float) -> float:
    """Divide x by y; y = 0 fails, and only the log hears of it."""
    result = x / y  # y == 0 raises; the traceback goes to the server log and nobody is told
    log.info("divide(%s, %s) = %s", x, y, result)
    return result


# --8<-- [end:divide]


# --8<-- [start:crunch]
async def crunch(ms: int) -> int:
    """Burn about `ms` milliseconds of CPU as an `async def` task, on the event loop."""
    # An `async def` task runs on the event loop itself. CPU work never awaits, so while it
    # runs this process answers no other request at all, not even GET /ping.
    loops = burn_cpu(ms)
    log.info("crunch(%s ms) done on the event loop: %s loops", ms, loops)
    return loops


def crunch_sync(ms: int) -> int:
    """Burn about `ms` milliseconds of CPU as a plain `def` task, in the thread pool."""
    # A plain `def` task runs in the thread pool instead, so the loop stays free; but the
    # thread holds the GIL, and the loop only gets it back between switch intervals.
    loops = burn_cpu(ms)
    log.info("crunch_sync(%s ms) done in a worker thread: %s loops", ms, loops)
    return loops


# --8<-- [end:crunch]


async def wait(seconds: float) -> float:
    """Sleep for `seconds` (I/O-like work)."""
    await asyncio.sleep(seconds)  # I/O-like: awaits, so the loop serves others meanwhile
    log.info("wait(%s s) done", seconds)
    return seconds


# name -> (argument model, function). The API makes one POST /tasks/<name> route per entry.
TASKS: dict[str, tuple[type[Args], Callable[..., Any]]] = {
    "add": (AddArgs, add),
    "divide": (DivideArgs, divide),
    "crunch": (CrunchArgs, crunch),
    "crunch_sync": (CrunchArgs, crunch_sync),
    "wait": (WaitArgs, wait),
}
