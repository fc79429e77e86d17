"""Stage 1: slow work with FastAPI's built-in BackgroundTasks.

What it adds: `POST /tasks/<name>` answers 202 at once and runs the task in this same
process, after the response has been sent.

Run it:
    make run STAGE=1
    # or by hand:
    uvicorn stage1_background_tasks.main:app --port 8000

What it leaves out, on purpose: there is no job id, no status and no result (they only go
to the log); a task dies with the web process; and CPU-heavy work competes with every
other request for this one process (an `async def` task blocks the event loop outright).
Stage 2 moves the work to a separate worker process through Redis.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import BackgroundTasks
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from jobkit.http import BODY_ERRORS, refuse_bad_input

from .config import get_settings
from .tasks import TASKS, Args


class Accepted(BaseModel):
    task: str
    detail: str


# --8<-- [start:app]
logging.basicConfig(level=get_settings().log_level, format="%(levelname)s %(name)s: %(message)s")
# FastAPIOffline is FastAPI whose /docs and /redoc load their files from this machine, not a CDN.
app = FastAPIOffline(
    title=get_settings().app_name,
    description=get_settings().app_description,
)
# Armour every app needs and this chapter doesn't teach (jobkit/http.py): a JSON 413 for an
# oversized body, and a 422 that never echoes the bad input back.
refuse_bad_input(app, get_settings().max_body_bytes)


@app.get("/ping", tags=["health"])
async def ping() -> dict[str, str]:
    """Liveness: answers without touching anything else."""
    return {"ping": "pong"}


@app.get("/health", tags=["health"])
async def health() -> dict[str, str]:
    """Readiness. This stage depends on nothing but itself."""
    return {"status": "ok"}


# --8<-- [end:app]


# --8<-- [start:submit]
def submit_route(
    name: str, model: type[Args], function: Callable[..., Any]
) -> Callable[..., Awaitable[Accepted]]:
    # FastAPI validates the body against this task's own `model`; mypy cannot check a variable.
    async def submit(args: model, background: BackgroundTasks) -> Accepted:  # type: ignore[valid-type]
        # The task runs in this process once the response is out. Nothing records it:
        # if the process stops, the task is gone, and its result only reaches the log.
        background.add_task(function, **dict(args))
        return Accepted(task=name, detail="Accepted. The result will be written to the log.")

    return submit


# One route per task, made in a loop rather than written out: each route gets its task's own
# body model, so FastAPI validates the arguments and /docs shows them, and a task added to
# TASKS gets its route. By hand it would be the same ten lines once per task.
for name, (model, function) in TASKS.items():
    app.post(
        f"/tasks/{name}",
        status_code=202,
        summary=f"Run {name} in the background",
        description=(function.__doc__ or "").strip(),
        tags=["tasks"],
        responses=BODY_ERRORS,
    )(submit_route(name, model, function))
# --8<-- [end:submit]
