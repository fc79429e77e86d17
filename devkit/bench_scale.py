"""How stage 4 scales with worker hosts, on `make scaleout`'s topology (devkit/scaleout.py).

    python -m devkit.bench_scale [--out docs/results/scale.md]

Not part of `make test`: it runs for a few minutes. One topology (Redis with sentinels,
PostgreSQL, one API) and workers added to it one host at a time:
1. I/O-bound: with 1, 2, 4 and 8 workers, JOBS_PER_WORKER `wait` jobs per worker, all due at
   the same instant (`run_at`), each worker running MAX_JOBS at once; jobs/s = jobs / (last
   finish in the ledger - the instant they were due);
2. CPU-bound: the same with `crunch` jobs, with 1, 2 and 4 workers;
3. a burst: BURST `wait` jobs on one worker, a worker added every ADD_EVERY_S, the ready
   depth (GET /queue) sampled each second until it is 0.
It prints Markdown, and writes it to --out when given.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from devkit.scaleout import ScaleOut

MAX_JOBS = 5  # jobs a worker runs at once
WAIT_S = 0.5  # an I/O-bound job: one worker does at most MAX_JOBS / WAIT_S jobs a second
CRUNCH_MS = 100  # a CPU-bound job: one worker does at most 1000 / CRUNCH_MS a second
JOBS_PER_WORKER = {"wait": 40, "crunch": 20}
DUE_IN_S = 3.0  # submissions end before the jobs are due
BURST = 300
ADD_EVERY_S = 5.0
BURST_WORKERS = 4


def submit(api: httpx.Client, task: str, body: dict, n: int, run_at: datetime) -> list[str]:
    ids = []
    for _ in range(n):
        response = api.post(f"/tasks/{task}", json=body, params={"run_at": run_at.isoformat()})
        response.raise_for_status()
        ids.append(response.json()["job_id"])
    return ids


def last_finish(database_url: str, ids: list[str], deadline_s: float) -> datetime:
    """When the last of `ids` finished, from the ledger, once they all have."""
    engine = sa.create_engine(database_url)
    query = sa.text(
        "SELECT count(*) FILTER (WHERE status = 'complete'), max(finish_time) FROM jobs "
        "WHERE job_id = ANY(:ids)"
    )
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                done, last = connection.execute(query, {"ids": ids}).one()
            if done == len(ids):
                return last if last.tzinfo else last.replace(tzinfo=UTC)
            time.sleep(0.5)
    finally:
        engine.dispose()
    raise RuntimeError(f"{len(ids)} jobs did not all complete within {deadline_s:.0f} s")


def throughput(scaleout: ScaleOut, api: httpx.Client, task: str, body: dict) -> float:
    n = JOBS_PER_WORKER[task] * len(scaleout.workers)
    due = datetime.now(UTC) + timedelta(seconds=DUE_IN_S + n / 100)
    ids = submit(api, task, body, n, due)
    finished = last_finish(scaleout.database_url, ids, 300)
    return n / (finished - due).total_seconds()


def grow_to(scaleout: ScaleOut, workers: int) -> None:
    while len(scaleout.workers) < workers:
        scaleout.add_worker()


def burst(scaleout: ScaleOut, api: httpx.Client) -> list[tuple[float, int, int]]:
    """(seconds since the burst, workers, ready jobs), each second until none is ready."""
    now = datetime.now(UTC)
    submit(api, "wait", {"seconds": WAIT_S}, BURST, now)
    started, samples, next_add = time.monotonic(), [], ADD_EVERY_S
    while True:
        since = time.monotonic() - started
        ready = api.get("/queue").json()["ready"]
        samples.append((since, len(scaleout.workers), ready))
        if ready == 0 or since > 300:
            return samples
        if since >= next_add and len(scaleout.workers) < BURST_WORKERS:
            scaleout.add_worker(wait=False)
            next_add += ADD_EVERY_S
        time.sleep(1.0)


def report(io: dict[int, float], cpu: dict[int, float], drain: list) -> str:
    one_io, one_cpu = io[1], cpu[1]
    lines = [
        f"Recorded {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()} {platform.machine()}, "
        f"Python {platform.python_version()}; every process on this one machine.",
        "",
        "| workers | I/O-bound jobs/s | x one worker | CPU-bound jobs/s | x one worker |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(io):
        c = f"{cpu[n]:.1f} | {cpu[n] / one_cpu:.2f}" if n in cpu else "— | —"
        lines.append(f"| {n} | {io[n]:.1f} | {io[n] / one_io:.2f} | {c} |")
    lines += ["", f"A burst of {BURST} `wait` jobs, a worker added every {ADD_EVERY_S:g} s:", "",
              "| s | workers | ready |", "|---:|---:|---:|"]  # fmt: skip
    lines += [f"| {s:.0f} | {w} | {r} |" for s, w, r in drain]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_scale", description=__doc__)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    env = {"MAX_JOBS": str(MAX_JOBS), "LOG_LEVEL": "WARNING"}
    io: dict[int, float] = {}
    cpu: dict[int, float] = {}
    with ScaleOut(folder, apis=1, workers=1, network=26, env=env) as scaleout:
        api = httpx.Client(base_url=scaleout.api_urls[0], timeout=30)
        for n in (1, 2, 4, 8):
            grow_to(scaleout, n)
            io[n] = throughput(scaleout, api, "wait", {"seconds": WAIT_S})
            print(f"wait, {n} workers: {io[n]:.1f} jobs/s", flush=True)
        while len(scaleout.workers) > 1:
            scaleout.remove_worker()
        for n in (1, 2, 4):
            grow_to(scaleout, n)
            cpu[n] = throughput(scaleout, api, "crunch", {"ms": CRUNCH_MS})
            print(f"crunch, {n} workers: {cpu[n]:.1f} jobs/s", flush=True)
    with ScaleOut(folder / "burst", apis=1, workers=1, network=26, env=env) as scaleout:
        api = httpx.Client(base_url=scaleout.api_urls[0], timeout=30)
        drain = burst(scaleout, api)
    shutil.rmtree(folder, ignore_errors=True)
    text = report(io, cpu, drain)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
