"""When a job should run: `run_at` or `delay_seconds` on any task, read by one dependency.

Every task route declares `schedule: ScheduleDep` (deps.py); FastAPI reads the two query
parameters, and `read_schedule` turns them into the time ARQ defers the job until.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NamedTuple

from fastapi import Query
from pydantic import AwareDatetime, BeforeValidator

from jobkit.http import invalid

from .config import get_settings


def iso_8601_only(value: Any) -> Any:
    # Pydantic would also take "0.0" as a Unix time; the schema and the docs say ISO 8601.
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("run_at must be an ISO 8601 time, e.g. 2026-11-24T18:00:00Z") from None
    return value


RunAt = Annotated[
    AwareDatetime | None,
    BeforeValidator(iso_8601_only),
    Query(
        description="When to run, as an ISO time WITH a timezone (2026-11-24T18:00:00Z); a naive "
        "time is refused rather than guessed. A time in the past runs now."
    ),
]
DelaySeconds = Annotated[float | None, Query(ge=0, description="Run this many seconds from now")]


# --8<-- [start:defer]
class Schedule(NamedTuple):
    as_asked: dict[str, Any]  # run_at and delay_seconds as sent: part of "the same request"
    defer_until: datetime | None  # ARQ's _defer_until; None: run now
    past: bool  # a run_at already past: the job runs now, and the answer says so


async def read_schedule(run_at: RunAt = None, delay_seconds: DelaySeconds = None) -> Schedule:
    """The dependency every task route has (deps.ScheduleDep)."""
    when = defer_until(run_at, delay_seconds, get_settings().max_defer_s)
    # Not a 422: a client's clock a little behind ours, or a retry that arrives after its
    # run_at, still gets its job (as ARQ and most queues do); the answer tells it why now.
    past = run_at is not None and when is None
    return Schedule({"run_at": run_at, "delay_seconds": delay_seconds}, when, past)


def defer_until(
    run_at: datetime | None, delay_seconds: float | None, max_defer_s: float
) -> datetime | None:
    """The time to hand ARQ as `_defer_until`, or None to run now."""
    if run_at is not None and delay_seconds is not None:
        raise invalid(("query", "run_at"), "Give run_at or delay_seconds, not both")
    now = datetime.now(UTC)
    ahead = (run_at - now).total_seconds() if run_at is not None else delay_seconds or 0
    if ahead > max_defer_s:  # checked before any date arithmetic: year 9999 is near
        asked = "run_at" if run_at is not None else "delay_seconds"
        raise invalid(("query", asked), f"Jobs can be scheduled at most {max_defer_s:.0f} s ahead")
    when = run_at if run_at is not None else now + timedelta(seconds=ahead)
    # ARQ calls .timestamp() on this: an aware datetime means the same instant on every
    # machine, whatever its local timezone. (A naive one would be read as the server's local
    # time: the reference project scheduled jobs hours off that way.)
    return when if when > now else None


# --8<-- [end:defer]
