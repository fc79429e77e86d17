"""How `GET /queue` and a `/metrics` scrape scale with the queue's length.

    python -m devkit.bench_queue [--sizes 1000,10000,100000] [--reads 50] [--http]

For each size N, a throwaway embedded Valkey is filled with N jobs the way ARQ stores them
(a job key and a queue entry each): half of them due, with scores over the last hour, half
scheduled over the next day, and RUNNING of the oldest due ones claimed as a worker claims a
job (its in-progress key). Then it times, --reads times each:

- `read_queue_state`: the Lua script alone (jobkit.queue_state);
- `read_queue`: what `GET /queue` reads (the state, and the live workers);
- a `/metrics` render: the same read, then the registry rendered (jobkit.metrics);
- with --http, `GET /queue` and `GET /metrics` through a real uvicorn process
  (devkit/observed_app.py with METRICS=1), client to answer.

It prints the median and 95th percentile, in milliseconds. Not part of `make test`;
tests/jobkit/test_bench_queue.py runs it at a tiny size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import redis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from devkit import harness
from devkit.valkey import EmbeddedValkey, free_port
from jobkit.metrics import ApiMetrics
from jobkit.queue_state import read_queue, read_queue_state

QUEUE = "arq:queue"
RUNNING = 20  # jobs claimed by "workers": what GET /queue calls running
BATCH = 5000  # commands per pipeline while filling
HOUR_MS, DAY_MS = 3_600_000, 86_400_000


def fill(url: str, size: int, running: int = RUNNING) -> None:
    """`size` jobs in the queue, half due and half scheduled; the `running` oldest claimed."""
    client = redis.Redis.from_url(url)
    now = int(time.time() * 1000)
    due = size // 2
    for start in range(0, size, BATCH):
        with client.pipeline(transaction=False) as pipe:
            for n in range(start, min(size, start + BATCH)):
                job_id = f"bench-{n:07d}"
                # due jobs: oldest first over the last hour; the rest over the next day
                score = now - HOUR_MS + n * HOUR_MS // due if n < due else now + n * DAY_MS // size
                payload = {"t": None, "f": "add", "a": [n, 1], "k": {}, "et": now - HOUR_MS}
                pipe.set(job_key_prefix + job_id, json.dumps(payload), px=2 * DAY_MS)
                pipe.zadd(QUEUE, {job_id: score})
                if n < min(running, due):
                    pipe.set(in_progress_key_prefix + job_id, b"1", px=DAY_MS)
            pipe.execute()
    client.close()


def timings(samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p95 = ordered[max(0, int(0.95 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered):7.2f} ms   p95 {p95:7.2f} ms"


async def time_reads(call: Callable[[], Awaitable[object]], reads: int) -> list[float]:
    await call()  # the first read loads the script into Redis
    samples = []
    for _ in range(reads):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(url: str, reads: int) -> dict[str, list[float]]:
    """The in-process reads against the queue at `url`, `reads` times each."""
    client = Redis.from_url(url)
    metrics = ApiMetrics(QUEUE)
    try:
        return {
            "read_queue_state": await time_reads(lambda: read_queue_state(client, QUEUE), reads),
            "read_queue (GET /queue)": await time_reads(lambda: read_queue(client, QUEUE), reads),
            "/metrics render": await time_reads(lambda: metrics.render(client), reads),
        }
    finally:
        await client.aclose()


def measure_http(url: str, workdir: Path, reads: int) -> dict[str, list[float]]:
    """GET /queue and GET /metrics through a real uvicorn process."""
    port = free_port()
    env = harness.stage_env(workdir, url, METRICS="1", LOG_LEVEL="WARNING")
    command = harness.api_command("devkit.observed_app", port, "--no-access-log")
    api = harness.Process("api", command, env, log=workdir / "api.log").start()
    base = f"http://{harness.HOST}:{port}"
    try:
        harness.wait_until(lambda: harness.api_answers(base), "the API", [api])
        found = {}
        with httpx.Client(base_url=base, timeout=10) as http:
            for path in ("/queue", "/metrics"):
                http.get(path).raise_for_status()
                samples = []
                for _ in range(reads):
                    started = time.perf_counter()
                    http.get(path).raise_for_status()
                    samples.append((time.perf_counter() - started) * 1000)
                found[f"HTTP GET {path}"] = samples
        return found
    finally:
        api.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_queue",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--sizes", default="1000,10000,100000",
                        type=lambda v: [int(n) for n in v.split(",")])  # fmt: skip
    parser.add_argument("--reads", type=int, default=50)
    parser.add_argument("--http", action="store_true", help="also through uvicorn")
    args = parser.parse_args(argv)
    print(f"{os.cpu_count()} CPUs; {RUNNING} jobs running; half due, half scheduled")
    for size in args.sizes:
        with (
            tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp,
            EmbeddedValkey(Path(tmp) / "valkey", persist=False) as valkey,
        ):
            started = time.monotonic()
            fill(valkey.url, size)
            print(f"\n{size:,} jobs (filled in {time.monotonic() - started:.1f} s)")
            found = asyncio.run(measure(valkey.url, args.reads))
            if args.http:
                found |= measure_http(valkey.url, Path(tmp), args.reads)
            for name, samples in found.items():
                print(f"  {name:<26}{timings(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
