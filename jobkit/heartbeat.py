"""Worker heartbeats: which workers are alive, and what each one is doing.

ARQ has one health-check key per queue, which every worker overwrites: it cannot say how many
workers there are, nor that one has died. Here each worker process writes a key of its own
(SAQ's design): its id, when it started, jobs running now, and ARQ's own counts of jobs done,
failed and retried, every `interval_s`, with a TTL of `ttl_s`. A worker that dies, even by
SIGKILL, stops writing, and its key expires: it drops out of the list within `ttl_s`. One
that shuts down cleanly removes its key at once.

Readers find the keys without SCAN: a sorted set per queue lists the worker ids, scored by
when each one's key expires. Every beat also drops the members past their expiry, and the set
itself expires with the last worker. Both scripts read the time from Redis, not from the
hosts, so workers on hosts whose clocks disagree still list each other correctly; and a
reader gets `last_seen_s` from the key's remaining TTL, also Redis's clock.

- In the worker: `await start(ctx, queue_name)` in on_startup, `await stop(ctx)` in
  on_shutdown.
- In the API: `await live_workers(redis, queue_name)`: the live ones, and how long ago any
  worker was last seen (for /health's "no worker seen for N s").

A learner may skip this module: the stages show the workers at `GET /queue`.
"""

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from arq.worker import Worker
from redis.asyncio import Redis

from jobkit.worker_events import worker_id, worker_of

INTERVAL_S = 5.0  # how often a worker writes its heartbeat
TTL_S = 15.0  # a worker missing three beats in a row has died: its key expires
_CTX_KEY = "jobkit_heartbeat"
logger = logging.getLogger(__name__)

# KEYS: the worker's key, the set, the last-beat key. ARGV: record, TTL (ms), worker id.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[3])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
redis.call('SET', KEYS[3], now)
"""
# KEYS: the set, the last-beat key. ARGV: the prefix of the workers' keys.
# Returns {now (ms), last beat (ms) or false, {record, PTTL, record, PTTL, ...}}.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('GET', ARGV[1] .. id)
  if record then
    table.insert(alive, record)
    table.insert(alive, redis.call('PTTL', ARGV[1] .. id))
  end
end
return {now, redis.call('GET', KEYS[2]), alive}
"""


@dataclass(frozen=True)
class WorkerBeat:
    """One live worker, as its last heartbeat described it."""

    id: str
    host: str
    pid: int
    started: str  # ISO 8601, UTC
    last_seen_s: float
    running: int
    done: int
    failed: int
    retried: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. where its metrics are


@dataclass(frozen=True)
class Workers:
    alive: list[WorkerBeat]
    last_seen_s: float | None  # since any worker's last beat, alive or not; None: never


def _keys(queue_name: str) -> tuple[str, str, str]:
    """(prefix of the workers' keys, the set listing them, the last-beat key). The last-beat
    key has no TTL: once every worker is gone, it still says when one was last seen."""
    return (
        f"jobkit:worker:{queue_name}:",
        f"jobkit:workers:{queue_name}",
        f"jobkit:beat:{queue_name}",
    )


class Heartbeat:
    """Writes one worker's heartbeat every `interval_s` until `stop()`."""

    def __init__(
        self,
        redis: Redis,
        worker: Worker,
        queue_name: str,
        *,
        interval_s: float = INTERVAL_S,
        ttl_s: float = TTL_S,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.redis = redis
        self.worker = worker
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.extra = extra or {}
        self.id = worker_id()
        self.started = datetime.now(UTC).isoformat()
        self._task: asyncio.Task[None] | None = None
        prefix, self._set, self._last = _keys(queue_name)
        self._key = prefix + self.id

    def record(self) -> dict[str, Any]:
        """What this worker says about itself: ARQ's own counts (the ones `arq` logs too)."""
        worker = self.worker
        return {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "ttl_ms": int(self.ttl_s * 1000),
            "running": sum(not task.done() for task in worker.tasks.values()),
            "done": worker.jobs_complete,
            "failed": worker.jobs_failed,
            "retried": worker.jobs_retried,
            "extra": self.extra,
        }

    async def beat(self) -> None:
        script = self.redis.register_script(_BEAT)
        args: list[str | int] = [json.dumps(self.record()), int(self.ttl_s * 1000), self.id]
        await script(keys=[self._key, self._set, self._last], args=args)

    async def _beat_until_stopped(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
            except Exception as exc:  # Redis away for a moment: the next beat tries again
                logger.warning("heartbeat of %s not written: %r", self.id, exc)

    async def start(self) -> None:
        await self.beat()  # seen from the moment it starts, not an interval later
        self._task = asyncio.create_task(self._beat_until_stopped())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key)
            pipe.zrem(self._set, self.id)
            await pipe.execute()


async def start(
    ctx: dict[str, Any],
    queue_name: str,
    *,
    interval_s: float = INTERVAL_S,
    ttl_s: float = TTL_S,
    extra: dict[str, Any] | None = None,
) -> Heartbeat | None:
    """Start this worker's heartbeat (call it from on_startup). `extra`: more fields for its
    record, e.g. where its metrics are. Called by hand (a script, a test), not by an arq
    Worker, there is no worker to beat for: it does nothing and returns None."""
    try:
        worker = worker_of(ctx)
    except RuntimeError:
        logger.info("heartbeat: not started by an arq Worker; no heartbeat")
        return None
    heartbeat = Heartbeat(
        ctx["redis"], worker, queue_name, interval_s=interval_s, ttl_s=ttl_s, extra=extra
    )
    await heartbeat.start()
    ctx[_CTX_KEY] = heartbeat
    return heartbeat


async def stop(ctx: dict[str, Any]) -> None:
    """Stop the heartbeat and remove this worker from the list (call it from on_shutdown)."""
    if (heartbeat := ctx.pop(_CTX_KEY, None)) is not None:
        await heartbeat.stop()


async def live_workers(redis: Redis, queue_name: str) -> Workers:
    """The workers whose heartbeat has not expired, in one round trip to Redis."""
    prefix, members, last = _keys(queue_name)
    script = redis.register_script(_READ)
    now_ms, last_ms, flat = await script(keys=[members, last], args=[prefix])
    alive = []
    for raw, pttl in zip(flat[::2], flat[1::2], strict=True):
        record = json.loads(raw)
        last_seen_s = max(0.0, (record.pop("ttl_ms") - int(pttl)) / 1000)
        alive.append(WorkerBeat(last_seen_s=last_seen_s, **record))
    since = None if last_ms is None else max(0.0, (int(now_ms) - int(last_ms)) / 1000)
    return Workers(sorted(alive, key=lambda beat: beat.id), since)


def workers_seen(workers: Workers) -> dict[str, Any]:
    """What /health says of the workers: how many are alive, and if none, since when none was
    seen ("no worker seen for 12 s"; "no worker seen yet" if none ever was)."""
    said: dict[str, Any] = {"workers": len(workers.alive)}
    if not workers.alive:
        since = workers.last_seen_s
        said["warning"] = "no worker seen " + ("yet" if since is None else f"for {since:.0f} s")
    return said
