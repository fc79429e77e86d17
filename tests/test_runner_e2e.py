"""`make run` for real: the runner starts embedded Valkey, uvicorn and an ARQ worker as
processes; a job goes through them over HTTP; Ctrl-C leaves no process behind."""

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
import redis

from devkit.harness import api_answers, api_command, wait_until
from devkit.stages import newest_stage
from devkit.topology import ReplicatedValkey
from devkit.valkey import free_port
from tests import tools
from tests.helpers import poll
from tests.processes import Processes, runner_command, stage_env

pytestmark = pytest.mark.e2e

START_DEADLINE_S = 30.0
JOB_DEADLINE_S = 15.0


def job_status(url: str, job_id: str) -> str | None:
    job = httpx.get(f"{url}/jobs/{job_id}").json()
    return job["status"] if job["status"] in ("complete", "failed") else None


def exited(runner) -> tuple[int, str]:
    """Wait for a runner that should give up at once: (exit code, output)."""
    poll(lambda: not runner.running(), START_DEADLINE_S, f"{runner.name} to exit")
    return runner.exit_code(), runner.output()


def test_the_runner_runs_a_job_restarts_a_dead_worker_and_stops_cleanly(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        runner = procs.runner(2, port, tmp_path / "data", stage_env(None, tmp_path / "unused"))
        children = psutil.Process(runner.pid).children(recursive=True)
        commands = [child.cmdline() for child in children]
        assert [c for c in commands if "valkey-server" in " ".join(c)]
        assert [c for c in commands if c[1:3] == ["-m", "uvicorn"]]
        assert [c for c in commands if c[1:3] == ["-m", "arq"]]

        job_id = httpx.post(f"{url}/tasks/add", json={"x": 5, "y": 10}).json()["job_id"]
        assert poll(lambda: job_status(url, job_id), JOB_DEADLINE_S, "the job") == "complete"
        assert httpx.get(f"{url}/jobs/{job_id}").json()["result"] == 15

        # A worker that dies is started again; the next job still completes.
        worker = next(c for c in children if c.cmdline()[1:3] == ["-m", "arq"])
        worker.kill()
        worker.wait(5)
        job_id = httpx.post(f"{url}/tasks/add", json={"x": 1, "y": 1}).json()["job_id"]
        assert poll(lambda: job_status(url, job_id), JOB_DEADLINE_S, "the job") == "complete"
        children = psutil.Process(runner.pid).children(recursive=True)

        runner.process.send_signal(signal.SIGINT)  # as Ctrl-C in its terminal
        code, output = exited(runner)
    assert code == 0, output
    assert "restarting it" in output
    stopped = output[output.index("SIGINT") :]
    assert stopped.index("shutdown on SIGTERM") < stopped.index("Finished server process")
    left = [child for child in children if child.is_running() and child.status() != "zombie"]
    assert left == [], f"left behind: {left}"


def test_a_port_in_use_is_a_one_line_error(tmp_path):
    with socket.socket() as sock, Processes(tmp_path / "logs") as procs:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        command = runner_command(2, port, tmp_path / "data")
        code, output = exited(procs.start("runner", command, stage_env(None, tmp_path)))
    assert code == 1
    assert f"error: port {port} on 127.0.0.1 is already in use" in output
    assert "Traceback" not in output


def test_a_redis_url_that_does_not_answer_is_a_one_line_error(tmp_path):
    env = stage_env(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with Processes(tmp_path / "logs") as procs:
        command = runner_command(2, free_port(), tmp_path / "data")
        code, output = exited(procs.start("runner", command, env))
    assert code == 1
    assert "does not answer" in output
    assert "Traceback" not in output


def test_the_benchmark_runs_end_to_end_and_prints_every_figure(tmp_path):
    # A smoke run of `make bench` (seconds, tiny numbers): it checks the tooling, not speed.
    tools.require("wrk")
    result = subprocess.run(
        [sys.executable, "-m", "devkit.bench", "--stage", "2", "--duration", "1", "--jobs", "50",
         "--repeat", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for figure in ("enqueue req/s", "worker jobs/s", "latency p95 ms", "status p99 ms"):
        assert figure in out
    # The yardstick ran beside the stage, through every phase, and answered every request.
    assert re.search(r"^\s+bare\s+stage 2$", out, re.M), out
    # The worker phase runs once a round (paired like the others): 2 rounds of 50 jobs.
    assert re.search(r"^worker completed\s+100/100\s+100/100$", out, re.M), out
    for phase in ("enqueue", "status"):
        assert re.search(rf"^{phase} errors\s+0\s+0$", out, re.M), out
    # Each rate and p99 has a row of ratios to the bare app: 1 for itself, a number for us.
    ratio = r"\d+\.\d\d( \(\d+\.\d\d-\d+\.\d\d\))?"
    assert len(re.findall(rf"^  (req/s|p99) vs bare\s+1\.00\s+{ratio}$", out, re.M)) == 4, out
    assert re.search(rf"^stage 2 enqueue / bare\s+{ratio}\s+target >= 0\.85", out, re.M), out
    assert re.search(rf"^stage 2 enqueue p99 / bare p99\s+{ratio}\s+target <= 1\.50", out, re.M)


def test_the_bench_yardstick_for_a_ledger_commits_each_row_before_it_enqueues(redis_url, tmp_path):
    # "bare+db" must cost what a committed record costs, or its ratios mean nothing: while
    # another connection holds SQLite's write lock, a POST waits and enqueues nothing.
    port, data = free_port(), tmp_path / "data"
    env = stage_env(redis_url, data, BARE_DB="1")
    url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        procs = stack.enter_context(Processes(tmp_path / "logs"))
        client = stack.enter_context(ThreadPoolExecutor(1))
        queue = stack.enter_context(redis.Redis.from_url(redis_url))
        proc = procs.start("api", api_command("devkit.bare_app", port), env)
        wait_until(lambda: api_answers(url), "the bare app", [proc])
        locker = stack.enter_context(
            contextlib.closing(sqlite3.connect(data / "bare.db", isolation_level=None))
        )
        locker.execute("BEGIN IMMEDIATE")  # the write lock, until the ROLLBACK below
        post = client.submit(httpx.post, f"{url}/tasks/add", json={"x": 1, "y": 2}, timeout=10)
        time.sleep(1.0)
        assert not post.done() and queue.keys("arq:job:*") == []
        locker.execute("ROLLBACK")
        job_id = post.result().json()["job_id"]
        assert queue.exists(f"arq:job:{job_id}")
        rows = locker.execute("SELECT job_id, function, args, status FROM jobs").fetchall()
        assert rows == [(job_id, "add", '{"x": 1, "y": 2}', "queued")]


def a_job_completes(url: str) -> bool:
    job_id = httpx.post(f"{url}/tasks/add", json={"x": 2, "y": 3}).json()["job_id"]
    return poll(lambda: job_status(url, job_id), JOB_DEADLINE_S, "the job") == "complete"


@pytest.mark.since_stage(newest_stage())
def test_a_second_runner_on_the_same_data_refuses_in_one_line_until_the_first_is_gone(
    stage, tmp_path
):
    # A second `make run STAGE=4 PORT=...` used to SIGTERM the first one's Valkey
    # (one pid file in .data/stage4/valkey/) and shared its jobs.db.
    env, data = stage_env(None, tmp_path / "unused"), tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        first = procs.runner(stage, port, data, env)
        valkey = redis.Redis.from_url(re.search(r"embedded Valkey on (\S+)", first.output())[1])

        code, output = exited(procs.start("runner", runner_command(stage, free_port(), data), env))
        lines = output.strip().splitlines()
        assert code != 0
        assert len(lines) == 1, output
        assert f"pid {first.pid}" in lines[0] and f":{port}" in lines[0], lines[0]
        # ... and the first one carries on as if nothing happened.
        assert first.running()
        assert valkey.ping()
        valkey.close()
        assert a_job_completes(url)

        # A runner that crashed (SIGKILL: no clean-up, its lock file stays) blocks nobody.
        orphans = psutil.Process(first.pid).children(recursive=True)
        os.kill(first.pid, signal.SIGKILL)  # the runner only: its children are orphaned
        first.process.wait()
        try:
            port = free_port()
            procs.runner(stage, port, data, env)
            assert a_job_completes(f"http://127.0.0.1:{port}")
        finally:
            for orphan in orphans:
                with contextlib.suppress(psutil.NoSuchProcess):
                    orphan.kill()


def job_states(url: str, ids: list[str]) -> list[tuple[str, int]]:
    jobs = [httpx.get(f"{url}/jobs/{job_id}").json() for job_id in ids]
    return [(job["status"], job["attempts"]) for job in jobs]


def said(runner, text: str) -> str:
    """Wait until the runner's output holds `text`; the output from there on."""
    poll(lambda: text in runner.output(), START_DEADLINE_S, f"the runner to say {text!r}")
    output = runner.output()
    return output[output.index(text) :]


def test_ctrl_c_in_stage1_stops_only_the_api_and_says_how_many_tasks_were_lost(tmp_path):
    # Stage 1's lesson, on screen: the tasks die with the web process, and only that.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        runner = procs.runner(1, port, tmp_path / "data", stage_env(None, tmp_path / "unused"))
        for _ in range(2):
            assert httpx.post(f"{url}/tasks/wait", json={"seconds": 20}).status_code == 202
        # Each task runs right after its 202 was sent, in the request that accepted it.
        runner.process.send_signal(signal.SIGINT)
        code, output = exited(runner)
    assert code == 0, output
    stopping = output[output.index("SIGINT") :].splitlines()[0]
    assert "stopping the API" in stopping, stopping
    assert "worker" not in stopping and "Valkey" not in stopping, stopping
    assert "runner | 2 background tasks were still running: cancelled, and lost" in output
    assert "wait(20.0 s) done" not in output


@pytest.mark.since_stage(newest_stage())
def test_ctrl_c_says_what_it_waits_for_and_a_second_one_puts_the_running_jobs_back_now(
    stage, tmp_path
):
    env, data = stage_env(None, tmp_path / "unused"), tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs:
        runner = procs.runner(stage, port, data, env)
        ids = [
            httpx.post(f"{url}/tasks/wait", json={"seconds": 20}).json()["job_id"] for _ in range(2)
        ]
        running = [("in_progress", 1)] * 2
        poll(lambda: job_states(url, ids) == running, JOB_DEADLINE_S, "both jobs to run")

        runner.process.send_signal(signal.SIGINT)
        said(runner, "waiting up to 8 s for 2 running jobs; Ctrl-C again to stop them now")
        runner.process.send_signal(signal.SIGINT)
        code, output = exited(runner)
        assert code == 0, output
        assert "wait complete" not in output, "the worker waited its 8 s after all"
        assert "stopped 2 running jobs: they are back in the queue" in output

        # Back in the queue, not lost nor held by ARQ's in-progress mark (40 s here): the
        # next start runs them again at once, as their second try.
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.runner(stage, port, data, env)
        again = [("in_progress", 2)] * 2
        poll(lambda: job_states(url, ids) == again, JOB_DEADLINE_S, "both jobs to run again")


def test_workers_0_is_said_in_one_line_and_its_jobs_wait_in_the_queue(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*runner_command(2, port, tmp_path / "data"), "--workers", "0"]
    with Processes(tmp_path / "logs") as procs:
        runner = procs.start("runner", command, stage_env(None, tmp_path / "unused"))
        said(runner, "Press Ctrl-C to stop.")
        job_id = httpx.post(f"{url}/tasks/add", json={"x": 1, "y": 2}).json()["job_id"]
        assert httpx.get(f"{url}/jobs/{job_id}").json()["status"] == "queued"
        output = runner.output()
    warnings = [line for line in output.splitlines() if "WORKERS=0" in line]
    assert len(warnings) == 1, output
    assert "no worker: jobs wait in the queue until one runs" in warnings[0]
    assert "arq stage2_arq_basic.worker.WorkerSettings" in warnings[0]


def start_waiting_job(url: str, seconds: float) -> str:
    job_id = httpx.post(f"{url}/tasks/wait", json={"seconds": seconds}).json()["job_id"]
    poll(lambda: job_states(url, [job_id])[0][0] == "in_progress", JOB_DEADLINE_S, "the job")
    return job_id


def test_ctrl_c_in_stage2_says_its_running_job_goes_back_in_the_queue(redis_url, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs, redis.Redis.from_url(redis_url) as queue:
        runner = procs.runner(2, port, tmp_path / "data", stage_env(redis_url, tmp_path))
        job_id = start_waiting_job(url, 20)
        runner.process.send_signal(signal.SIGINT)
        code, output = exited(runner)
        assert code == 0, output
        assert "stopping the worker, then the API (your Redis keeps running)" in output
        assert "1 running job: cancelled, back in the queue; the next start runs it again" in output
        # ... which is what ARQ did: queued again, no longer marked in progress.
        assert queue.zscore("arq:queue", job_id) is not None
        assert not queue.exists(f"arq:in-progress:{job_id}")


@pytest.mark.since_stage(newest_stage())
def test_with_your_own_redis_a_second_ctrl_c_says_when_arq_runs_the_job_again(
    stage, redis_url, tmp_path
):
    # Other workers may share your Redis: their in-progress marks look like ours, so the
    # runner leaves every mark alone and says when this one expires.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Processes(tmp_path / "logs") as procs, redis.Redis.from_url(redis_url) as queue:
        runner = procs.runner(stage, port, tmp_path / "data", stage_env(redis_url, tmp_path))
        job_id = start_waiting_job(url, 20)
        runner.process.send_signal(signal.SIGINT)
        said(runner, "waiting up to 8 s for 1 running job; Ctrl-C again to stop it now")
        runner.process.send_signal(signal.SIGINT)
        code, output = exited(runner)
        assert code == 0, output
        stopped = re.search(r"stopped 1 running job: ARQ runs it again once its in-progress "
                            r"mark expires, in about (\d+) s", output)  # fmt: skip
        assert stopped, output
        left_s = queue.pttl(f"arq:in-progress:{job_id}") / 1000
        assert 0 < left_s <= int(stopped[1]) + 1
        assert queue.zscore("arq:queue", job_id) is not None


def test_the_runner_runs_a_stage_on_a_sentinel_watched_redis_url(tmp_path):
    with ReplicatedValkey(tmp_path / "redis", network=123) as nodes:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with Processes(tmp_path / "logs") as procs:
            runner = procs.runner(2, port, tmp_path / "data", stage_env(nodes.url, tmp_path))
            job_id = httpx.post(f"{url}/tasks/add", json={"x": 2, "y": 3}).json()["job_id"]
            assert poll(lambda: job_status(url, job_id), JOB_DEADLINE_S, "the job") == "complete"
            runner.process.send_signal(signal.SIGINT)
            code, output = exited(runner)
        assert code == 0, output
        assert f"using your Redis at {nodes.url}" in output
        primary = nodes.current_primary()
        with redis.Redis(primary.host, primary.port) as client:
            assert client.exists(f"arq:result:{job_id}")


def test_a_sentinel_url_whose_sentinels_do_not_answer_is_a_one_line_error(tmp_path):
    env = stage_env(f"redis+sentinel://127.0.0.1:{free_port()}/jobs", tmp_path)
    with Processes(tmp_path / "logs") as procs:
        command = runner_command(2, free_port(), tmp_path / "data")
        code, output = exited(procs.start("runner", command, env))
    assert code == 1
    assert "does not answer" in output
    assert "Traceback" not in output
