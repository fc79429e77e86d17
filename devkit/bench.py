"""`make bench`: how fast is a stage's queue? Prints one table, stages side by side.

    python -m devkit.bench [--stage 2 --stage 3] [--duration 15] [--jobs 5000]

Per stage, on its own throwaway embedded Valkey and data folder, with one uvicorn process:
1. enqueue   POST /tasks/add at concurrency 10 for --duration s (wrk), no worker running;
2. worker    --jobs `add` jobs queued through the API, then one `arq --burst` worker drains
             them; jobs/s = jobs / (last finish - first start), from ARQ's own timestamps;
3. latency   50 `add` jobs sent one at a time (50 ms apart) to a running worker;
             enqueue → finish from the job's own timestamps, p50/p95;
4. status    GET /jobs/{id} of finished jobs at concurrency 50 for --duration s (wrk).

The load generator is wrk (C, event-driven, one thread), so the client is not the
bottleneck; install it with `apt-get install wrk` or `brew install wrk`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from devkit import harness
from devkit.stages import STAGES

LATENCY_JOBS = 50
LATENCY_SPACING_S = 0.05
ENQUEUE_CONCURRENCY = 10
STATUS_CONCURRENCY = 50
STATUS_IDS = 1000
TARGETS = {  # the goals the project set itself, on the 2-core reference machine
    "enqueue req/s": (">=", 2000),
    "worker jobs/s": (">=", 1500),
    "latency p50 ms": ("<=", 40),
    "latency p95 ms": ("<=", 80),
    "status p99 ms": ("<=", 50),
}


@dataclass
class Result:
    stage: int
    figures: dict[str, float | str] = field(default_factory=dict)


def stage_processes(stage: int, workdir: Path) -> harness.StageProcesses:
    """Valkey + uvicorn for one stage, no worker yet (each phase starts its own)."""
    return harness.StageProcesses(
        stage, workdir, workers=0,
        api_args=("--no-access-log", "--log-level", "warning"),
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )  # fmt: skip


def run_wrk(url: str, path: str, concurrency: int, seconds: int, script: Path) -> dict:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run([*command, url + path], capture_output=True, text=True, check=True).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * scale[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "req/s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50 ms": percentile("50"),
        "p99 ms": percentile("99"),
        "requests": int(re.search(r"(\d+) requests in", out)[1]),
        "errors": int(errors[1]) if errors else 0,
        "socket errors": socket_errors[1] if socket_errors else "none",
    }


async def submit(url: str, count: int, concurrency: int = 20) -> list[str]:
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        queue = asyncio.Queue[int]()
        for n in range(count):
            queue.put_nowait(n)

        async def one() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                response = await client.post("/tasks/add", json={"x": n, "y": 1})
                response.raise_for_status()
                ids.append(response.json()["job_id"])

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return ids


async def read_jobs(url: str, ids: list[str], concurrency: int = 50) -> list[dict]:
    # Bounded: thousands of requests queued on one httpx pool time out waiting for it.
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def one(job_id: str) -> dict:
            async with slots:
                return (await client.get(f"/jobs/{job_id}")).json()

        return await asyncio.gather(*(one(job_id) for job_id in ids))


def span_seconds(jobs: list[dict], start: str, end: str) -> list[float]:
    from datetime import datetime

    return [
        (datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds()
        for job in jobs
    ]


def bench_stage(stage: int, args: argparse.Namespace, scripts: Path) -> Result:
    result = Result(stage)
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-stage{stage}-") as tmp,
        stage_processes(stage, Path(tmp)) as stack,
    ):
        url = stack.url
        # 1. enqueue rate (no worker: jobs pile up in Redis, which is what we measure)
        say(stage, f"enqueue: POST /tasks/add, c={ENQUEUE_CONCURRENCY}, {args.duration} s")
        enqueue = run_wrk(url, "/tasks/add", ENQUEUE_CONCURRENCY, args.duration,
                          scripts / "post_add.lua")  # fmt: skip
        result.figures |= {f"enqueue {k}": v for k, v in enqueue.items()}
        redis.Redis.from_url(stack.redis_url).flushdb()

        # 2. worker throughput: queue N jobs, then one burst worker drains them
        say(stage, f"worker: queueing {args.jobs} add jobs, then one burst worker")
        ids = asyncio.run(submit(url, args.jobs))
        started = time.monotonic()
        burst = stack.start_worker("--burst")
        if burst.process.wait() != 0:
            raise SystemExit(f"stage {stage}: the burst worker failed; see {burst.log}")
        wall = time.monotonic() - started
        jobs = asyncio.run(read_jobs(url, ids))
        done = [job for job in jobs if job["status"] == "complete"]
        first = min(job["start_time"] for job in done)
        last = max(job["finish_time"] for job in done)
        busy = span_seconds([{"a": first, "b": last}], "a", "b")[0]
        result.figures |= {
            "worker jobs/s": len(done) / busy,
            "worker completed": f"{len(done)}/{args.jobs}",
            "worker wall s (incl. start-up)": wall,
        }

        # 3. enqueue -> complete latency with a running worker
        say(stage, f"latency: {LATENCY_JOBS} jobs one at a time to a running worker")
        worker = stack.start_worker()  # returns once it polls, before the clock matters
        try:
            ids = []
            for _ in range(LATENCY_JOBS):
                ids.append(asyncio.run(submit(url, 1, 1))[0])
                time.sleep(LATENCY_SPACING_S)
            deadline = time.monotonic() + 30
            while True:
                jobs = asyncio.run(read_jobs(url, ids))
                if all(job["status"] == "complete" for job in jobs):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"stage {stage}: latency jobs did not complete")
                time.sleep(0.2)
        finally:
            worker.stop()
        latencies = sorted(s * 1000 for s in span_seconds(jobs, "enqueue_time", "finish_time"))
        result.figures |= {
            "latency p50 ms": statistics.median(latencies),
            "latency p95 ms": latencies[int(0.95 * len(latencies)) - 1],
        }

        # 4. status reads of finished jobs
        say(stage, f"status: GET /jobs/{{id}} of finished jobs, c={STATUS_CONCURRENCY}")
        finished = [job["job_id"] for job in done[:STATUS_IDS]]
        lua = scripts / f"status_{stage}.lua"
        lua.write_text(
            "local ids = {" + ",".join(f'"{i}"' for i in finished) + "}\n"
            "request = function()\n"
            '  return wrk.format("GET", "/jobs/" .. ids[math.random(#ids)])\nend\n'
        )
        status = run_wrk(url, "/", STATUS_CONCURRENCY, args.duration, lua)
        result.figures |= {f"status {k}": v for k, v in status.items()}
    return result


def say(stage: int, line: str) -> None:
    print(f"[stage {stage}] {line}", file=sys.stderr, flush=True)


def verdict(name: str, value: float | str) -> str:
    if name not in TARGETS or isinstance(value, str):
        return ""
    op, target = TARGETS[name]
    ok = value >= target if op == ">=" else value <= target
    return f"  ({'meets' if ok else 'MISSES'} {op} {target})"


def render(results: list[Result]) -> str:
    names = list(dict.fromkeys(name for result in results for name in result.figures))
    width = max(len(name) for name in names) + 2
    lines = [
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}",
        "load generator: wrk (1 thread); API: 1 uvicorn process; 1 ARQ worker",
        "",
        "".ljust(width) + "".join(f"stage {r.stage}".rjust(14) for r in results),
    ]
    for name in names:
        cells = []
        for result in results:
            value = result.figures.get(name, "-")
            cells.append((f"{value:,.1f}" if isinstance(value, float) else str(value)).rjust(14))
        targets = verdict(name, results[-1].figures.get(name, "-")) if len(results) == 1 else ""
        if len(results) > 1 and name in TARGETS:
            op, target = TARGETS[name]
            targets = f"  (target {op} {target})"
        lines.append(name.ljust(width) + "".join(cells) + targets)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", type=int, action="append", choices=[n for n in STAGES if n >= 2],
                        help="repeat for several; default: every stage with a worker")  # fmt: skip
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk phase")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs for the throughput phase")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk`")
        return 1
    stages = args.stage or [n for n in STAGES if n >= 2]
    with tempfile.TemporaryDirectory(prefix="bench-scripts-") as tmp:
        scripts = Path(tmp)
        (scripts / "post_add.lua").write_text(
            'wrk.method = "POST"\nwrk.body = \'{"x": 5, "y": 10}\'\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        results = [bench_stage(stage, args, scripts) for stage in stages]
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
