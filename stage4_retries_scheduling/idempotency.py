"""The Idempotency-Key header: a client that retries a POST gets its first job back.

A key moves through three states in Redis, and points at a job only once the job exists:

    claimed  a request is creating the job (IDEMPOTENCY_CLAIM_TTL_S): a duplicate gets 409
             "in progress"
    done     the job's row and its enqueue succeeded (IDEMPOTENCY_TTL_S): a duplicate gets it
    free     never used, released by a request that failed, or left by a crash and expired

The task routes wrap making a job in `claimed()`, the one function here they call.
"""

import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from arq.connections import ArqRedis
from fastapi import Header, HTTPException
from pydantic import AfterValidator, BaseModel
from redis.exceptions import RedisError

from .config import get_settings
from .jobstore import EnqueueUnconfirmed

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
    Header(
        alias="idempotency-key",  # `key: Key` in a route: HTTP header names are case-blind
        max_length=MAX_KEY_LENGTH,
        description="Send the same key when you retry: the retry replays the first job",
    ),
    # After Header's max_length, not before it: pydantic would then check the length of
    # whatever the validator returned, and say "items" where it means characters.
    AfterValidator(not_blank),
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


def request_fingerprint(task: str, args: dict[str, Any], schedule: dict[str, Any]) -> str:
    """What makes two requests "the same": the task, its arguments and the schedule as asked
    for (delay_seconds=60 twice is the same request, though "now + 60 s" moved on)."""
    canonical = json.dumps([task, args, schedule], sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --8<-- [start:claimed]
@asynccontextmanager
async def claimed(
    redis: ArqRedis, key: str | None, job_id: str, fingerprint: str
) -> AsyncIterator[str | None]:
    """Around making the job: yields None to go on and make it as `job_id`, or the id of the
    job an earlier request with this key made, to answer with instead. No key: just None.

    The key is claimed first, then confirmed once the job exists, or released if making it
    failed. (Pointing the key at the new id at once, as a single SET NX would, hands a
    retry an id that never runs if we fail.)
    """
    if key is None:
        yield None
        return
    settings = get_settings()
    claim = Claim(key, job_id, fingerprint)
    if earlier := await claim.take(redis, settings.idempotency_claim_ttl_s):
        yield earlier
        return
    try:
        yield None
    except EnqueueUnconfirmed:  # Redis may hold the job: a retry replays it, not a second
        await claim.confirm(redis, settings.idempotency_ttl_s)
        raise
    except Exception:
        await claim.release(redis)  # no job was made: a retry may use the key
        raise
    await claim.confirm(redis, settings.idempotency_ttl_s)


# --8<-- [end:claimed]


# --8<-- [start:claim]
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


def read_earlier(raw: bytes) -> dict[str, Any] | None:
    """What an earlier request stored under the key; None if it is not ours to read."""
    try:
        earlier = json.loads(raw)
        fields = {"job_id": str(earlier["job_id"]), "fingerprint": earlier["fingerprint"]}
    except (ValueError, TypeError, KeyError):  # not JSON, or not one of our records
        return None
    # The previous release stored no "done": it pointed the key at the job as it created it,
    # and replayed that job to every retry. Its keys live on after an upgrade (for their
    # IDEMPOTENCY_TTL_S), and are read the way it read them.
    return fields | {"done": earlier.get("done", True)}


class Claim:
    """One request's hold on an Idempotency-Key: take it, then confirm it or release it."""

    def __init__(self, key: str, job_id: str, fingerprint: str) -> None:
        self.redis_key = PREFIX + key
        self.fingerprint = fingerprint
        self.claimed = json.dumps({"job_id": job_id, "fingerprint": fingerprint, "done": False})
        self.done = json.dumps({"job_id": job_id, "fingerprint": fingerprint, "done": True})

    async def take(self, redis: ArqRedis, claim_ttl_s: int) -> str | None:
        """None: the key is ours, go on and create the job. A job id: an earlier request
        with this key created it; replay it. 409: another request, or one still in flight."""
        for _ in range(2):  # twice: the earlier claim may be released between our SET and GET
            # SET NX is atomic: of two requests racing with one key, exactly one gets it. The
            # short TTL is for a crash: an API that dies here leaves a claim that soon expires.
            if await redis.set(self.redis_key, self.claimed, nx=True, ex=claim_ttl_s):
                return None
            if (raw := await redis.get(self.redis_key)) is not None:
                earlier = read_earlier(raw)
                if earlier is None or earlier["fingerprint"] != self.fingerprint:
                    raise HTTPException(
                        409, "This Idempotency-Key was used for a different request"
                    )
                if earlier["done"]:
                    return earlier["job_id"]
                break
        # Not the earlier job's id: that job may not exist yet, or ever.
        raise HTTPException(
            409,
            "A request with this Idempotency-Key is still in progress; retry it shortly",
            headers={"Retry-After": "1"},
        )

    async def confirm(self, redis: ArqRedis, ttl_s: int) -> None:
        """The job exists: from now on the key replays it, for the whole TTL."""
        confirm = redis.register_script(CONFIRM)
        try:
            await confirm(keys=[self.redis_key], args=[self.claimed, self.done, ttl_s])
        except RedisError:  # the job exists and runs; a retry could make a second one
            logger.warning("idempotency: could not confirm %s", self.redis_key, exc_info=True)

    async def release(self, redis: ArqRedis) -> None:
        """No job was made: free the key for the client's retry."""
        release = redis.register_script(RELEASE)
        try:
            await release(keys=[self.redis_key], args=[self.claimed])
        except RedisError:  # Redis is down too: the claim expires after its short TTL
            logger.warning("idempotency: could not release %s", self.redis_key, exc_info=True)


# --8<-- [end:claim]
