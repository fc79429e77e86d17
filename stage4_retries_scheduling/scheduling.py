"""When a job should run (`run_at` / `delay_seconds`) and the Idempotency-Key check."""

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from arq.connections import ArqRedis
from fastapi import HTTPException, Query
from pydantic import AwareDatetime, BeforeValidator

from .errors import invalid

IDEMPOTENCY_PREFIX = "idempotency:"


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


def fingerprint(task: str, args: dict[str, Any], schedule: dict[str, Any]) -> str:
    """What makes two requests "the same": the task, its arguments and the schedule as asked
    for (delay_seconds=60 twice is the same request, though "now + 60 s" moved on)."""
    canonical = json.dumps([task, args, schedule], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --8<-- [start:idempotency]
async def claim_idempotency_key(
    redis: ArqRedis, key: str, job_id: str, print_: str, ttl_s: int
) -> str | None:
    """Remember key -> job_id. Returns the earlier job's id if the key was used before with
    the same request, None if this is the first use; 409 if it was used for another request."""
    record = json.dumps({"job_id": job_id, "fingerprint": print_})
    for _ in range(2):  # twice: the earlier record may expire between our SET and GET
        # SET NX is atomic: of two identical requests racing, exactly one creates the job.
        if await redis.set(IDEMPOTENCY_PREFIX + key, record, nx=True, ex=ttl_s):
            return None
        if (raw := await redis.get(IDEMPOTENCY_PREFIX + key)) is not None:
            earlier = json.loads(raw)
            if earlier["fingerprint"] != print_:
                raise HTTPException(409, "This Idempotency-Key was used for a different request")
            return earlier["job_id"]
    raise HTTPException(409, "This Idempotency-Key is being used concurrently; try again")


# --8<-- [end:idempotency]
