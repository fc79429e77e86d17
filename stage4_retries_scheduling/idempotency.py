"""The Idempotency-Key header: a client that retries a POST gets its first job back.

A key moves through three states in Redis, and points at a job only once the job exists:

    claimed  a request is creating the job (CLAIM_TTL_S): a duplicate gets 409 "in progress"
    done     the job's row and its enqueue succeeded (IDEMPOTENCY_TTL_S): a duplicate gets it
    free     never used, released by a request that failed, or left by a crash and expired
"""

import hashlib
import json
import logging
from typing import Annotated, Any

from arq.connections import ArqRedis
from fastapi import Header, HTTPException
from pydantic import AfterValidator, BaseModel
from redis.exceptions import RedisError

HEADER = "Idempotency-Key"
PREFIX = "idempotency:"  # + the key: where Redis keeps it
MAX_KEY_LENGTH = 200
logger = logging.getLogger(__name__)


def not_blank(key: str | None) -> str | None:
    # An empty key would be one key shared by every client that sends an empty header.
    if key is not None and not key.strip():
        raise ValueError("Idempotency-Key must not be empty; send a new UUID per request")
    return key


Key = Annotated[
    str | None,
    AfterValidator(not_blank),
    Header(
        max_length=MAX_KEY_LENGTH,
        description="Send the same key when you retry: the retry replays the first job",
    ),
]


class Conflict(BaseModel):
    detail: str


RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Conflict,
        "description": "This Idempotency-Key was used for a different request, or the first "
        "request with it is still in progress (retry it shortly)",
    }
}


def fingerprint(task: str, args: dict[str, Any], schedule: dict[str, Any]) -> str:
    """What makes two requests "the same": the task, its arguments and the schedule as asked
    for (delay_seconds=60 twice is the same request, though "now + 60 s" moved on)."""
    canonical = json.dumps([task, args, schedule], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --8<-- [start:idempotency]
# Compare-and-set and compare-and-delete, each one atomic step inside Redis. A plain SET or
# DEL could overwrite or delete the claim of another request that came after ours expired.
CONFIRM = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current then
    return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return false
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Claim:
    """One request's hold on an Idempotency-Key: take it, then confirm it or release it."""

    def __init__(self, key: str, job_id: str, print_: str) -> None:
        self.redis_key, self.print_ = PREFIX + key, print_
        self.claimed = json.dumps({"job_id": job_id, "fingerprint": print_, "done": False})
        self.done = json.dumps({"job_id": job_id, "fingerprint": print_, "done": True})

    async def take(self, redis: ArqRedis, claim_ttl_s: int) -> str | None:
        """None: the key is ours, go on and create the job. A job id: an earlier request
        with this key created it; replay it. 409: another request, or one still in flight."""
        for _ in range(2):  # twice: the earlier claim may be released between our SET and GET
            # SET NX is atomic: of two requests racing with one key, exactly one gets it. The
            # short TTL is for a crash: an API that dies here leaves a claim that soon expires.
            if await redis.set(self.redis_key, self.claimed, nx=True, ex=claim_ttl_s):
                return None
            if (raw := await redis.get(self.redis_key)) is not None:
                earlier = json.loads(raw)
                if earlier["fingerprint"] != self.print_:
                    raise HTTPException(
                        409, "This Idempotency-Key was used for a different request"
                    )
                if earlier["done"]:
                    return earlier["job_id"]
                break
        # Not the earlier job's id: that job may not exist yet, or ever (the IETF
        # Idempotency-Key draft's answer to a duplicate in flight).
        raise HTTPException(
            409,
            "A request with this Idempotency-Key is still in progress; retry it shortly",
            headers={"Retry-After": "1"},
        )

    async def confirm(self, redis: ArqRedis, ttl_s: int) -> None:
        """The job exists: from now on the key replays it, for the whole TTL."""
        try:
            await redis.eval(CONFIRM, 1, self.redis_key, self.claimed, self.done, ttl_s)
        except RedisError:  # the job exists and runs; a retry could make a second one
            logger.warning("idempotency: could not confirm %s", self.redis_key, exc_info=True)

    async def release(self, redis: ArqRedis) -> None:
        """No job was made: free the key for the client's retry."""
        try:
            await redis.eval(RELEASE, 1, self.redis_key, self.claimed)
        except RedisError:  # Redis is down too: the claim expires after its short TTL
            logger.warning("idempotency: could not release %s", self.redis_key, exc_info=True)


# --8<-- [end:idempotency]
