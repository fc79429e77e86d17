"""Stage 2+: status requests at concurrency 50 against a real uvicorn: no error, no stall.

The reference project's API (fastapi-arq, see README.md) stopped answering under ~16
concurrent status requests (a blocking database session inside async code). Here 50 clients
ask for job statuses, and for the job list where a stage has one, REQUESTS times each; every
answer must be a 200 (or the 404 an unknown id deserves) and none may take longer than STALL_S.

This asserts behaviour, not speed: a slow or busy machine answers later, not less. How
many requests a second the API serves is measured by `make bench`.
"""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import httpx
import pytest

from tests.processes import SCALE, Processes, free_port, stage_env

pytestmark = [pytest.mark.since_stage(2), pytest.mark.e2e]

CONCURRENCY = 50
REQUESTS = {"smoke": 4, "full": 60}[SCALE]  # per client
# A stall is the API answering nothing for a long time (the reference project's hung for
# good). The bounds are generous on purpose: a 2-core laptop that is busy with other work
# also runs this test's 50 clients, under coverage tracing in `make test`.
STALL_S = 30.0  # no single answer may take longer
GAP_S = 10.0  # and no such stretch may pass without any answer


async def hammer(url: str, paths: list[str]) -> tuple[list[float], list[float], list[str]]:
    latencies: list[float] = []
    answered_at: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10 * STALL_S) as client:
        # Open the 50 connections first: the measurement is of answers, not TCP handshakes.
        await asyncio.gather(*(client.get("/ping") for _ in range(CONCURRENCY)))

        async def one_client(n: int) -> None:
            for i in range(n, n + REQUESTS):
                path = paths[i % len(paths)]
                started = time.monotonic()
                try:
                    response = await client.get(path)
                except httpx.HTTPError as exc:
                    errors.append(f"{path}: {exc!r}")
                    continue
                answered_at.append(time.monotonic())
                latencies.append(answered_at[-1] - started)
                expected = 404 if "unknown" in path else 200
                if response.status_code != expected:
                    errors.append(f"{path}: {response.status_code} {response.text[:200]}")

        started = time.monotonic()
        await asyncio.gather(*(one_client(n) for n in range(CONCURRENCY)))
    gaps = [b - a for a, b in pairwise([started, *sorted(answered_at)])]
    return latencies, gaps, errors


def test_status_requests_at_concurrency_50_get_no_errors_and_no_stall(
    stage, client, drain, redis_url, tmp_path
):
    ids = [client.post("/tasks/add", json={"x": n, "y": 1}).json()["job_id"] for n in range(20)]
    drain()  # 20 complete jobs, then 10 still queued, and an id nobody knows
    ids += [client.post("/tasks/add", json={"x": n, "y": 2}).json()["job_id"] for n in range(10)]
    paths = [f"/jobs/{job_id}" for job_id in ids] + ["/jobs/unknown-job-id"]
    if "/jobs" in client.get("/openapi.json").json()["paths"]:
        paths.append("/jobs")  # the job list, from stage 3
    port = free_port()
    with Processes(tmp_path / "logs") as procs:
        procs.api(stage, port, stage_env(redis_url, tmp_path / "data", LOG_LEVEL="WARNING"))
        latencies, gaps, errors = asyncio.run(hammer(f"http://127.0.0.1:{port}", paths))

    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)] if latencies else float("nan")
    print(
        f"\n{stage}: {len(latencies)} status requests at concurrency "
        f"{CONCURRENCY}: {len(errors)} errors, p50 {latencies[len(latencies) // 2] * 1000:.0f} "
        f"ms, p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms, "
        f"longest gap between answers {max(gaps) * 1000:.0f} ms"
    )
    assert not errors, errors[:5]
    assert len(latencies) == CONCURRENCY * REQUESTS  # every request was answered
    assert latencies[-1] < STALL_S, f"the slowest answer took {latencies[-1]:.2f} s"
    assert max(gaps) < GAP_S, f"no answer for {max(gaps):.2f} s"
