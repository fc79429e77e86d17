"""Stage 2+: a worker that dies or is stopped loses no job.

Real `arq` worker processes and real signals. SIGKILL (a crash, the OOM killer) gives the
worker no chance to say anything: its running jobs stay marked "in progress" until that
mark expires, after the worker's longest job timeout + 10 s, and then any
worker runs them again. That is why the job timeout is a setting: these tests lower it to
JOB_TIMEOUT_S so recovery takes seconds, and the default (30 s) bounds it at 40 s.
SIGTERM (a deploy, Ctrl-C) is orderly: ARQ cancels the running jobs and puts them straight
back in the queue, where the next worker finds them at once.

Both run on stage 2 (no ledger) and on the newest stage (a ledger, as from stage 3):
whether there is a ledger to keep right is all that differs between the stages here.
"""

from __future__ import annotations

import re
import time

import pytest

from devkit.stages import newest_stage
from tests.helpers import enqueue, finished, poll
from tests.processes import SCALE, Processes, stage_env

pytestmark = [pytest.mark.stages(2, newest_stage()), pytest.mark.e2e]

JOB_TIMEOUT_S = 2  # the timeout the workers run with here; a `wait` job takes JOB_S
ARQ_IN_PROGRESS_EXTRA_S = 10  # ARQ's fixed margin on top of the longest job timeout
JOBS = {"smoke": 200, "full": 1000}[SCALE]
JOB_S = 0.3
COMPLETE_DEADLINE_S = JOB_TIMEOUT_S + ARQ_IN_PROGRESS_EXTRA_S + 40
# Recovery waits for the in-progress mark; the slack covers a new worker's start and the
# re-run on a busy laptop, and still tells "the mark expired" from "stuck for a day".
RECOVERY_SLACK_S = 20
STOP_BOUND_S = 10  # a SIGTERMed worker with 0.5 s jobs stops well within this (a hang doesn't)


def in_progress(raw_redis) -> set[str]:
    return {key.decode().rsplit(":", 1)[1] for key in raw_redis.keys("arq:in-progress:*")}


def completions(*workers) -> dict[str, int]:
    """How many times each job ran to the end, from ARQ's `← <id>:<function> ●` log lines.

    Only our uuid job ids count: stage 4's cron job (id `cron:…`) may run during a test."""
    counts: dict[str, int] = {}
    for worker in workers:
        for job_id in re.findall(r"← ([0-9a-f]{32}):\w+ ●", worker.output()):
            counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def assert_all_complete(client, ids: list[str], seconds: float) -> dict[str, dict]:
    jobs = {job_id: client.get(f"/jobs/{job_id}").json() for job_id in ids}
    not_complete = {i: j for i, j in jobs.items() if j.get("status") != "complete"}
    assert not not_complete, f"{len(not_complete)} jobs did not complete: {not_complete}"
    assert {job["result"] for job in jobs.values()} == {seconds}
    return jobs


def test_a_sigkilled_worker_loses_no_job_and_a_new_worker_finishes_them_within_seconds(
    stage, client, raw_redis, redis_url, tmp_path
):
    env = stage_env(redis_url, tmp_path / "data", JOB_TIMEOUT_S=str(JOB_TIMEOUT_S))
    ids = [enqueue(client, "wait", {"seconds": JOB_S}) for _ in range(JOBS)]
    with Processes(tmp_path / "logs") as procs:
        first = procs.worker(stage, env)
        poll(lambda: len(finished(raw_redis, ids)) >= 20, 30, "the first 20 jobs")
        running = poll(lambda: in_progress(raw_redis), 10, "jobs in progress")
        first.kill()
        killed_at = time.monotonic()
        interrupted = in_progress(raw_redis) - finished(raw_redis, ids)
        assert interrupted, "the worker was killed between jobs; nothing was interrupted"
        # ARQ counts a try when the job starts, a moment after claiming it: a job killed in
        # between never counted its first try.
        counted = {i for i in interrupted if raw_redis.get(f"arq:retry:{i}")}

        second = procs.worker(stage, env)
        poll(
            lambda: finished(raw_redis, ids) >= interrupted,
            COMPLETE_DEADLINE_S,
            f"the {len(interrupted)} interrupted jobs to be run again",
            every_s=0.1,
        )
        recovery_s = time.monotonic() - killed_at
        poll(lambda: len(finished(raw_redis, ids)) == len(ids), 60, "every job", every_s=0.1)
        all_done_s = time.monotonic() - killed_at
        assert second.running()

    jobs = assert_all_complete(client, ids, JOB_S)
    # Those that had started ran a second time; one claimed but not yet started ran once.
    attempts = {i: jobs[i]["attempts"] for i in interrupted}
    assert attempts == {i: 2 if i in counted else 1 for i in interrupted}, (attempts, counted)
    ran = completions(first, second)
    assert set(ran) == set(ids)
    # The in-progress mark kept every other worker off them until it expired, and no longer.
    bound_s = JOB_TIMEOUT_S + ARQ_IN_PROGRESS_EXTRA_S
    assert recovery_s < bound_s + RECOVERY_SLACK_S, f"recovery took {recovery_s:.1f} s"
    print(
        f"\n{stage}: SIGKILL with {len(running)} of {len(ids)} jobs running: lost 0, "
        f"{len(interrupted)} re-run, recovery {recovery_s:.1f} s "
        f"(in-progress mark {bound_s} s), every job done {all_done_s:.1f} s after the kill"
    )


def test_a_sigterm_puts_running_jobs_back_and_no_job_is_lost_or_recorded_twice(
    stage, client, raw_redis, redis_url, tmp_path
):
    env = stage_env(redis_url, tmp_path / "data", JOB_TIMEOUT_S=str(JOB_TIMEOUT_S))
    ids = [enqueue(client, "wait", {"seconds": 0.5}) for _ in range(30)]
    with Processes(tmp_path / "logs") as procs:
        first = procs.worker(stage, env)
        poll(lambda: len(finished(raw_redis, ids)) >= 5, 30, "the first 5 jobs")
        poll(lambda: in_progress(raw_redis), 10, "jobs in progress")
        started = time.monotonic()
        first.terminate()
        stopped_s = time.monotonic() - started
        left = set(ids) - finished(raw_redis, ids)
        # A job that was running is put back at once, with no in-progress mark to wait for.
        # ARQ 0.28 has a race: a job it had claimed but not yet started when the signal
        # came keeps its mark (and the worker exits with a CancelledError traceback), so
        # that job waits for the mark to expire, as after a crash. Still not lost.
        stuck = in_progress(raw_redis)

        second = procs.worker(stage, env)
        restarted = time.monotonic()
        poll(
            lambda: len(finished(raw_redis, ids)) == len(ids),
            COMPLETE_DEADLINE_S,
            "every job",
            every_s=0.1,
        )
        rest_s = time.monotonic() - restarted

    assert_all_complete(client, ids, 0.5)
    ran = completions(first, second)
    assert set(ran) == set(ids), "a job was lost"
    # ARQ runs jobs at least once: it logs a job's end, then writes its result shielded
    # from cancellation, and a worker stopping at that instant may exit before the write
    # lands, so the job runs again. Only a job the stopped worker had started may do that.
    started_by_first = set(re.findall(r"→ ([0-9a-f]{32}):", first.output()))
    twice = {job_id for job_id, count in ran.items() if count > 1}
    assert twice <= started_by_first, f"ran twice, never interrupted: {twice - started_by_first}"
    assert max(ran.values()) <= 2
    if stage.number >= 3:  # the ledger: one row per job, whatever ran twice

        def rows() -> list[dict]:
            return client.get("/jobs", params={"limit": 100}).json()["jobs"]

        # The running worker writes its rows a moment after the results (write-behind).
        poll(lambda: {row["status"] for row in rows()} == {"complete"}, 10, "the rows to land")
        assert sorted(row["job_id"] for row in rows()) == sorted(ids)
    assert stopped_s < STOP_BOUND_S, f"the worker took {stopped_s:.1f} s to stop"
    print(
        f"\n{stage}: SIGTERM stopped the worker in {stopped_s:.2f} s; {len(left)} jobs "
        f"left or put back ({len(stuck)} claimed but not started, so kept marked in progress); "
        f"the next worker finished them in {rest_s:.1f} s; lost 0, ran twice {len(twice)}"
    )
