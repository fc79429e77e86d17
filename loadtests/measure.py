"""What one load step measured, read from Locust's files and the stage itself.

The runner (`compare.py`) drives the steps; this module turns raw records into numbers:
percentiles, Locust's stats, CPU use per process, and the final state of every accepted job.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

# A failed probe (a timeout, a refused connection) counts as slow as the prober's own
# timeout, REQUEST_TIMEOUT_S in locustfile.py: dropping it would make a stalled API look fast.
FAILED_PROBE_MS = 10_000.0
TERMINAL = {"complete", "failed", "cancelled"}
MIN_JOBS_FOR_GROWTH = 5  # fewer jobs than this in a step: no trend worth fitting


class CpuMeter:
    """CPU seconds used by the machine, by some processes, and by one more that may exit."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.wall = time.monotonic()
        self.machine = self._machine_busy()
        self.own = self._process_seconds(pids)
        self.locust = 0.0

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _process_seconds(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def sample_locust(self, pid: int) -> None:
        """Locust's CPU so far; call it often, since the last sample before it exits counts."""
        self.locust = self._process_seconds([pid]) or self.locust

    def cores(self, pids: list[int]) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        machine = (self._machine_busy() - self.machine) / wall
        stage = (self._process_seconds(pids) - self.own) / wall if pids == self.pids else None
        locust = self.locust / wall
        result = {"machine": machine, "locust": locust}
        if stage is not None:  # not if the stage's processes changed under us
            result |= {"stage": stage, "other": machine - stage - locust}
        return {key: round(value, 2) for key, value in result.items()}


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles in ms, plus the sample count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": rank(1.0),
            "count": len(ordered)}  # fmt: skip


def read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line]


def prober_latency(samples: list[list[str]], column: int) -> dict[str, float]:
    """The prober's percentiles (column 1: timed from due, 2: from sent); failures count slow."""
    values = [float(row[column]) if row[3] == "1" else FAILED_PROBE_MS for row in samples]
    return percentiles(values) | {"failed": sum(row[3] != "1" for row in samples)}


def read_locust_stats(csv_prefix: Path) -> dict[str, dict[str, float]]:
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.exists():
        return {}
    stats = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            name = row["Name"] if row["Type"] in ("", "None") else f"{row['Type']} {row['Name']}"
            stats[name] = {
                "count": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50": float(row["50%"]) if row["50%"] != "N/A" else 0.0,
                "p95": float(row["95%"]) if row["95%"] != "N/A" else 0.0,
            }
    return stats


def read_locust_errors(csv_prefix: Path) -> list[dict[str, str]]:
    path = Path(f"{csv_prefix}_failures.csv")
    if not path.exists():
        return []
    with path.open() as file:
        return list(csv.DictReader(file))


def wait_until_settled(progress: Callable[[], int], target: int, stall_s: float,
                       limit_s: float) -> int:  # fmt: skip
    """Poll `progress()` until it reaches `target`, stops moving for `stall_s` seconds, or
    `limit_s` seconds have passed."""
    started = last_change = time.monotonic()
    value = progress()
    while value < target and time.monotonic() - last_change < stall_s:
        if time.monotonic() - started > limit_s:
            break
        time.sleep(0.2)
        new = progress()
        if new != value:
            value, last_change = new, time.monotonic()
    return value


def job_states(url: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Stage 2+: each accepted job as GET /jobs/{id} shows it now, plus when we asked."""
    states: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=5) as client:
        for job_id in job_ids:
            try:
                response = client.get(f"/jobs/{job_id}")
                job = response.json() if response.status_code == 200 else {"status": "unknown"}
            except httpx.HTTPError:
                job = {"status": "unknown"}
            states[job_id] = job | {"observed": datetime.now(UTC).isoformat()}
    return states


def _seconds(job: dict[str, Any], start: str, end: str) -> float | None:
    """Seconds from the job's `start` time to its `end` time, or to when it was observed."""
    if not job.get(start):
        return None
    until = job.get(end) or job["observed"]
    return (datetime.fromisoformat(until) - datetime.fromisoformat(job[start])).total_seconds()


def job_times(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Queue wait and turnaround percentiles (ms), and how fast the turnaround grows.

    A job that has not started (or finished) yet counts up to when it was observed: a lower
    bound, which is all a queue that fell behind can tell.
    """
    waits = [w * 1000 for job in jobs if (w := _seconds(job, "enqueue_time", "start_time"))
             is not None]  # fmt: skip
    timed = [(job, t) for job in jobs if (t := _seconds(job, "enqueue_time", "finish_time"))
             is not None]  # fmt: skip
    finished = [(job, t) for job, t in timed if job.get("finish_time")]
    return {
        "queue_wait_ms": percentiles(waits),
        "turnaround_ms": percentiles([t * 1000 for _, t in timed]),
        # Finished jobs only: the lower bounds of jobs observed all at once would shrink with
        # their enqueue time and hide the growth.
        "growth": growth(finished),
    }


def growth(timed: list[tuple[dict[str, Any], float]]) -> float | None:
    """Seconds of extra turnaround per second of the step: the least-squares slope of each
    job's turnaround against its enqueue time. About 0 while the workers keep up; above 0 when
    each job waits longer than the one before, i.e. the queue grows."""
    if len(timed) < MIN_JOBS_FOR_GROWTH:
        return None
    enqueued = [datetime.fromisoformat(job["enqueue_time"]).timestamp() for job, _ in timed]
    if len(set(enqueued)) < 2:
        return None
    slope = statistics.linear_regression(enqueued, [t for _, t in timed]).slope
    return round(slope, 3)
