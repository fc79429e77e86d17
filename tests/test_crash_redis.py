"""Stage 2+: Redis crashes with jobs queued, and comes back.

Through the runner (`python -m devkit.run`), as a learner runs it, with REDIS_URL pointing at
an embedded Valkey this test owns, with the append-only file on, so the test can crash it
(SIGKILL) and start it again on the same port and data. What must hold:
- every job queued before the crash completes after it (the append-only file kept them);
- the worker comes back: ARQ doesn't reconnect, the runner starts a new one;
- while Redis is down the API answers 503 quickly, and it recovers without a restart.

It runs on the newest stage only: Redis, its append-only file, the runner and ARQ behave
the same in every stage from 2, and the ledger (stage 3+) plays no part here.
"""

from __future__ import annotations

import time

import httpx
import psutil
import pytest
import redis

from devkit.stages import newest_stage
from devkit.valkey import EmbeddedValkey
from tests.helpers import finished, poll
from tests.processes import SCALE, Processes, free_port, stage_env

pytestmark = [pytest.mark.since_stage(newest_stage()), pytest.mark.e2e]

JOB_TIMEOUT_S = 2
JOBS = {"smoke": 100, "full": 1000}[SCALE]  # Redis crashes after 20: most are still queued
JOB_S = 0.2
FAST_503_S = 5.0  # the API's Redis timeout is 1 s; this guards against a hang, generously


def uvicorn_pid(runner) -> int:
    children = psutil.Process(runner.pid).children(recursive=True)
    return next(c.pid for c in children if "uvicorn" in c.cmdline())


def test_redis_crash_with_jobs_queued_loses_none_and_api_and_worker_recover(stage, tmp_path):
    valkey = EmbeddedValkey(tmp_path / "valkey", persist=True)
    valkey.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = stage_env(valkey.url, tmp_path / "data", JOB_TIMEOUT_S=str(JOB_TIMEOUT_S))
    client = redis.Redis.from_url(valkey.url)
    try:
        with Processes(tmp_path / "logs") as procs, httpx.Client(base_url=url) as http:
            runner = procs.runner(stage, port, tmp_path / "run", env)
            api_pid = uvicorn_pid(runner)
            ids = []
            for _ in range(JOBS):
                response = http.post("/tasks/wait", json={"seconds": JOB_S})
                assert response.status_code == 202, response.text
                ids.append(response.json()["job_id"])
            poll(lambda: len(finished(client, ids)) >= 20, 30, "the first 20 jobs")

            valkey.kill()
            crashed = time.monotonic()
            for method, path, body in [
                ("POST", "/tasks/add", {"x": 1, "y": 2}),
                ("GET", f"/jobs/{ids[-1]}", None),
                ("GET", "/health", None),
            ]:
                started = time.monotonic()
                response = http.request(method, path, json=body, timeout=10)
                assert time.monotonic() - started < FAST_503_S, path
                assert response.status_code == 503, (path, response.text)
                assert response.json()["detail" if path != "/health" else "down"]

            # ARQ's worker dies on a lost connection; keep Redis down until it has.
            poll(lambda: "restarting it" in runner.output(), 15, "the worker to exit")
            valkey.start()  # same port, same append-only file
            down_s = time.monotonic() - crashed
            restarted = time.monotonic()
            poll(lambda: http.get("/health").status_code == 200, 10, "the API to see Redis")
            api_recovered_s = time.monotonic() - restarted
            assert uvicorn_pid(runner) == api_pid, "the API was restarted; it should recover"
            assert len(client.zrange("arq:queue", 0, -1)) > 0, "the queue did not survive"
            poll(lambda: len(finished(client, ids)) == len(ids), 60, "every job", every_s=0.2)
            all_done_s = time.monotonic() - restarted
            statuses = {http.get(f"/jobs/{job_id}").json()["status"] for job_id in ids}
            assert statuses == {"complete"}
    finally:
        client.close()
        valkey.stop()
    print(
        f"\n{stage}: Redis down {down_s:.1f} s with {JOBS} jobs queued: lost 0; API healthy "
        f"{api_recovered_s:.2f} s after Redis came back, every job done after {all_done_s:.1f} s"
    )
