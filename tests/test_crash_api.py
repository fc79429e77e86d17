"""The API process killed with work in flight: stage 1 loses it, stage 2+ loses none.

A real uvicorn process, SIGKILLed right after it accepted the work, then started again.
"""

from __future__ import annotations

import re

import httpx
import pytest

from devkit.stages import newest_stage
from tests.helpers import poll
from tests.processes import Processes, free_port, stage_env

pytestmark = pytest.mark.e2e

TASKS = 5
# Long enough to be still running when the API is killed, even on a laptop with both cores
# busy, where the five POSTs alone took over a second (the kill then came too late).
TASK_S = 3.0
CONTROL_S = TASK_S + 0.5  # sent after the restart; once it is done, the lost ones would be
JOB_S = 0.5  # stage 2+: the jobs wait in Redis, so they need not be long


def submit_waits(url: str, seconds: float, count: int) -> list[httpx.Response]:
    responses = [httpx.post(f"{url}/tasks/wait", json={"seconds": seconds}) for _ in range(count)]
    assert [r.status_code for r in responses] == [202] * count, [r.text for r in responses]
    return responses


def done_lines(*procs, seconds: float) -> int:
    return sum(len(re.findall(re.escape(f"wait({seconds} s) done"), p.output())) for p in procs)


@pytest.mark.until_stage(1)
def test_stage1_loses_every_accepted_task_when_the_api_is_killed(stage, tmp_path):
    # This is the lesson of stage 1, as a test: 202 meant "I will try", not "I have it".
    port, env = free_port(), stage_env(None, tmp_path / "data")
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        first = procs.api(stage, port, env)
        submit_waits(url, TASK_S, TASKS)
        assert done_lines(first, seconds=TASK_S) == 0, "a task ended before the kill"
        first.kill()
        second = procs.api(stage, port, env)

        submit_waits(url, CONTROL_S, 1)
        poll(lambda: done_lines(second, seconds=CONTROL_S), 30, "the control task")

    assert done_lines(first, second, seconds=TASK_S) == 0, "a task survived the kill?"
    # and the only trace they ever existed is the access log of the process that died
    assert first.output().count("POST /tasks/wait") == TASKS


# The newest stage only: from stage 2 on, the job is in Redis before the 202, in every stage
# alike. The load-test smoke run (tests/test_loadtests_smoke.py) shows the same for stage 2.
@pytest.mark.since_stage(newest_stage())
def test_stage2_and_later_lose_no_accepted_job_when_the_api_is_killed(stage, redis_url, tmp_path):
    port, env = free_port(), stage_env(redis_url, tmp_path / "data")
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        first = procs.api(stage, port, env)
        ids = [r.json()["job_id"] for r in submit_waits(url, JOB_S, TASKS)]
        first.kill()
        procs.api(stage, port, env)  # a new API process; the jobs wait in Redis meanwhile
        assert {httpx.get(f"{url}/jobs/{i}").json()["status"] for i in ids} == {"queued"}
        procs.worker(stage, env)

        def all_complete() -> bool:
            return {httpx.get(f"{url}/jobs/{i}").json()["status"] for i in ids} == {"complete"}

        poll(all_complete, 30, "every job accepted before the kill", every_s=0.2)
