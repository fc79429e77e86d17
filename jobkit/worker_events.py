"""What happens to each job in an ARQ worker, told to observers: the worker's metrics, its
traces and its log lines all listen here (the heartbeat reads ARQ's own counts instead).

ARQ's job hooks (on_job_start, after_job_end) see only `ctx`: not the job's function, not
how the try ended; and ARQ does not call them at all when a job ends without its function
running (max tries exceeded, expired, unknown function, aborted before start: ARQ_NOTES A5,
A12), which is how a job that used up its retries fails. So `attach(ctx, observers)`, called
once from the worker's on_startup, finds the arq `Worker` that owns `ctx` and watches five
points of ARQ 0.28 (pinned below 0.29; tests/jobkit/test_worker_events.py holds each one):

- `Worker.run_job`, one pick-up of one job: its `Pickup` is `current()` for every line ARQ
  or the job logs meanwhile, and observers hear `ended` when ARQ is done with it;
- the job *deserializer*, with which ARQ reads the job's payload: its function, and the
  trace context the API put in the payload (tracing.py). Observers hear `picked`;
- its `on_job_start` hook (the stage's own still runs): the try's number, before ARQ logs
  the try's first line;
- each job function, wrapped: its start, how long it ran, what it raised (`started`);
- the *serializer* ARQ stores a result with: how the job ended, exactly as it is stored (a
  timeout is TimeoutError, an abort CancelledError; a job that never ran, its reason).

The wrappers call ARQ's own code and return what it returns: nothing ARQ stores changes.
What is not seen exactly: a function with keep_result=0 (cron jobs, by default) that times
out or is aborted stores no result, and is counted as "retried", like a try that a shutdown
cancelled (it runs again).

A learner may skip this module: the stages call it through jobkit.observe.
"""

import asyncio
import dataclasses
import logging
import os
import pickle
import socket
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

from arq import Retry
from arq.worker import RetryJob, Worker

logger = logging.getLogger(__name__)
UNKNOWN = "<unknown>"
CARRIER_KEY = "trace_context"  # where the API's serializer puts the trace context (tracing.py)
Outcome = str  # "complete", "failed", "timeout", "cancelled" (final) or "retried" (runs again)


@dataclass
class Pickup:
    """One pick-up of one job by this worker: a try of its function, or an ending without one."""

    job_id: str
    worker_id: str
    queue: str
    due_ms: int  # the job's score: when it became due
    function: str = UNKNOWN
    job_try: int | None = None  # None until a try starts (and if none does)
    ran: bool = False  # its function started
    carrier: dict[str, str] = field(default_factory=dict)
    queue_wait_s: float | None = None  # from due to the function's start
    duration_s: float | None = None  # the function's run
    raised: BaseException | None = None
    returned: bool = False
    stored: tuple[bool, Any] | None = None  # (success, result) as ARQ stored them
    outcome: Outcome | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # observers' own state


class Observer(Protocol):
    def picked(self, pickup: Pickup) -> None: ...  # ARQ has read the job's payload
    def started(self, pickup: Pickup) -> None: ...  # its function starts a try
    def ended(self, pickup: Pickup) -> None: ...  # ARQ is done with it; `outcome` is set


_current: ContextVar[Pickup | None] = ContextVar("jobkit_pickup", default=None)
_attached: "weakref.WeakSet[Worker]" = weakref.WeakSet()


def current() -> Pickup | None:
    """The pick-up this code runs for (in the worker: ARQ's lines about it, hooks, the job)."""
    return _current.get()


def worker_id() -> str:
    """WORKER_ID from the environment, else `host:pid`: one per worker process (two workers
    given the same WORKER_ID would share one heartbeat)."""
    return os.environ.get("WORKER_ID") or f"{socket.gethostname()}:{os.getpid()}"


def worker_of(ctx: dict[str, Any]) -> Worker:
    """The arq Worker whose `ctx` this is. Call it from on_startup: ARQ awaits that hook from
    `Worker.main`, so the worker is on the call stack (ARQ passes hooks nothing else)."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is Worker.main.__code__:
            found = frame.f_locals.get("self")
            if isinstance(found, Worker) and found.ctx is ctx:
                return found
        frame = frame.f_back
    raise RuntimeError("worker_of(ctx) must be called from the worker's on_startup hook")


def attach(ctx: dict[str, Any], observers: Sequence[Observer]) -> Worker:
    """Watch every job this worker picks up from now on; returns the Worker. Once per worker:
    a second attach would wrap ARQ twice, and every observer would hear each job twice."""
    worker = worker_of(ctx)
    if worker in _attached:
        raise RuntimeError("worker_events.attach was already called for this worker")
    _attached.add(worker)
    me = worker_id()
    run_job = worker.run_job
    serialize = worker.job_serializer or _pickle_dumps  # ARQ's default is pickle
    deserialize = worker.job_deserializer or _pickle_loads
    stage_hook = worker.on_job_start

    async def watched_run_job(job_id: str, score: int) -> None:
        pickup = Pickup(job_id, me, worker.queue_name, score)
        token = _current.set(pickup)  # each pick-up runs in a task of its own, ARQ's lines too
        try:
            await run_job(job_id, score)
        finally:
            pickup.outcome = outcome(pickup)
            _tell(observers, "ended", pickup)
            _current.reset(token)

    def watched_deserialize(raw: bytes) -> dict[str, Any]:
        data: dict[str, Any] = deserialize(raw)
        if (pickup := _current.get()) is not None:
            pickup.function = str(data.get("f", UNKNOWN))
            pickup.carrier = data.get(CARRIER_KEY) or {}
            _tell(observers, "picked", pickup)
        return data

    def watched_serialize(data: dict[str, Any]) -> bytes:
        if "s" in data and (pickup := _current.get()) is not None:  # a result, not a job
            pickup.stored = (bool(data["s"]), data["r"])
        return serialize(data)

    async def on_job_start(ctx: dict[str, Any]) -> None:
        if (pickup := _current.get()) is not None:
            pickup.job_try = ctx["job_try"]
        if stage_hook is not None:
            await stage_hook(ctx)

    worker.on_job_start = on_job_start
    worker.run_job = watched_run_job  # type: ignore[method-assign]
    worker.job_deserializer = watched_deserialize
    worker.job_serializer = watched_serialize
    for name, function in worker.functions.items():
        wrapped = _watch_function(function.coroutine, observers)
        worker.functions[name] = dataclasses.replace(function, coroutine=wrapped)
    return worker


def _watch_function(coroutine: Callable[..., Any], observers: Sequence[Observer]) -> Any:
    async def watched(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        pickup = _current.get()
        if pickup is None:  # not run by ARQ's run_job (a test calling the function itself)
            return await coroutine(ctx, *args, **kwargs)
        pickup.ran = True
        pickup.queue_wait_s = max(0.0, time.time() - pickup.due_ms / 1000)
        _tell(observers, "started", pickup)
        started = time.perf_counter()
        try:
            result = await coroutine(ctx, *args, **kwargs)
        except BaseException as exc:  # CancelledError too: a timeout, an abort, a shutdown
            pickup.raised = exc
            raise
        finally:
            pickup.duration_s = time.perf_counter() - started
        pickup.returned = True
        return result

    return watched


def outcome(pickup: Pickup) -> Outcome:
    """How the pick-up ended: from the result ARQ stored if it stored one, else from the try."""
    if pickup.stored is not None:
        success, result = pickup.stored
        if success:
            return "complete"
        if isinstance(result, asyncio.CancelledError):
            return "cancelled"  # DELETE /jobs/{id}, while running or before it started
        if isinstance(result, TimeoutError) and pickup.ran:
            return "timeout"
        return "failed"
    if not pickup.ran:
        return "failed"  # never ran, and ARQ could not even store why
    if pickup.returned:
        return "complete"  # keep_result=0: nothing stored
    if isinstance(pickup.raised, Retry | RetryJob | asyncio.CancelledError):
        return "retried"  # Retry, or a shutdown cancelled it: ARQ runs it again
    return "failed"


def _tell(observers: Sequence[Observer], event: str, pickup: Pickup) -> None:
    """Call each observer; one that fails is logged, never allowed to fail the job or ARQ."""
    for observer in observers:
        try:
            getattr(observer, event)(pickup)
        except Exception:
            logger.exception("observer %r failed on %s of job %s", observer, event, pickup.job_id)


def _pickle_loads(raw: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = pickle.loads(raw)
    return loaded


def _pickle_dumps(data: dict[str, Any]) -> bytes:
    return pickle.dumps(data)
