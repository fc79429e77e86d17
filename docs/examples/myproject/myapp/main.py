"""Your app, with stage 3's jobs wired in (docs/guides/your-app.md).

Before: a FastAPI app with its own settings (config.py), its own database (db.py) and a route
of its own. The stage was copied to myapp/jobs/ and jobkit/ beside myapp/; the imports from
.jobs and jobkit and the block marked `wire` are what wiring it in took, and the `route` block
is a route of yours that starts a job. Run from the project's root:

    uvicorn myapp.main:app
    arq myapp.jobs.worker.WorkerSettings
"""

# --8<-- [start:imports]
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from jobkit.http import refuse_bad_input

from . import db
from .config import get_settings
from .jobs import errors as job_errors
from .jobs.deps import LedgerDep, RedisDep
from .jobs.jobstore import create_job
from .jobs.main import app as jobs_app
from .jobs.tasks import ReportArgs

# --8<-- [end:imports]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await run_in_threadpool(db.create_tables)  # your own tables, as before
    yield


app = FastAPI(title=get_settings().app_name, lifespan=lifespan)

# --8<-- [start:wire]
# The stage's routes (POST /tasks/{name}, GET /jobs/{job_id}, GET /jobs, ...), and with them
# its lifespan: FastAPI runs an included router's lifespan inside yours, with your app, so the
# Redis pool and the ledger the stage's dependencies read are on your app's state.
app.include_router(jobs_app.router)
# The stage's answers to Redis or the database being down: a JSON 503, not a 500.
job_errors.install(app)
# A 422 that never echoes the input (the stage's task models refuse NaN, which FastAPI's own
# 422 would echo into a 500), and a 413 over your app's body limit: for every route of yours.
refuse_bad_input(app, get_settings().max_body_bytes)
# --8<-- [end:wire]


# --8<-- [start:route]
class NoteIn(BaseModel):
    text: str


class NoteQueued(BaseModel):
    note_id: int
    job_id: str
    status_url: str


# The job this route starts: a short report, standing in for a job of yours.
REPORT_STEPS = 3
REPORT_STEP_S = 0.2


@app.post("/notes", status_code=202)
async def add_note(
    body: NoteIn, redis: RedisDep, ledger: LedgerDep, response: Response
) -> NoteQueued:
    """Save a note, and start a job about it."""
    # Your synchronous database code runs in a thread, as FastAPI runs a `def` route: called
    # straight from an `async def` route, it would stall every other request while it waits.
    note = await run_in_threadpool(db.save_note, body.text)
    # The stage's way to start a job: its arguments checked by the task's own model, the
    # ledger's row written first, then the job sent to Redis (create_job).
    args = ReportArgs(steps=REPORT_STEPS, step_seconds=REPORT_STEP_S)
    job_id = uuid.uuid4().hex
    await create_job(redis, ledger, "report", job_id, args.model_dump())
    response.headers["Location"] = f"/jobs/{job_id}"
    return NoteQueued(note_id=note.id, job_id=job_id, status_url=f"/jobs/{job_id}")


# --8<-- [end:route]
