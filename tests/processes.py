"""Real processes for the end-to-end tests: start uvicorn / arq / the runner, signal them,
read their output, and never leave one behind.

The command lines, the environment and "is it ready" are devkit/harness.py's, the same the
runner, the benchmark and the load tests use. What this module adds is the tests' side:
each process's output in a log file of the test's own, and on leaving the block, a SIGKILL
for every process the test started and everything they started in turn.

    with Processes(tmp_path) as procs:
        api = procs.api(stage, port, env)
        worker = procs.worker(stage, env)
        worker.kill()            # SIGKILL, as a crash would
    # leaving the block kills whatever is still running, even when the test failed
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil

from devkit import harness
from devkit.valkey import free_port

# `make test` runs each scenario at a size that takes seconds; `make chaos` sets
# CHAOS_SCALE=full for the longer versions.
SCALE = "full" if os.environ.get("CHAOS_SCALE") == "full" else "smoke"
STOP_DEADLINE_S = 15.0


class Proc(harness.Process):
    """A harness process whose output is in `<log_dir>/<name>.log`."""

    def kill_all(self) -> None:
        """SIGKILL the process and everything it started, even in process groups of their
        own (the runner gives each child one, so that Ctrl-C reaches only the runner)."""
        try:
            descendants = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        self.signal(signal.SIGKILL)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(descendants, timeout=STOP_DEADLINE_S)

    def terminate(self, deadline_s: float = STOP_DEADLINE_S) -> int | None:
        """SIGTERM, as a supervisor sends it; wait for the exit (SIGKILL after the deadline)."""
        return self.stop(deadline_s)


class Processes:
    """Starts processes for one test and kills every one of them on exit, failure or not."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Proc] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Proc:
        taken = sum(1 for p in self.started if p.name.split("#")[0] == name)
        unique = f"{name}#{taken + 1}" if taken else name
        proc = Proc(unique, command, env, log=self.log_dir / f"{unique}.log")
        self.started.append(proc)
        return proc.start()

    def api(self, stage: Any, port: int, env: dict[str, str]) -> Proc:
        """`uvicorn <stage>.main:app` on 127.0.0.1:port, once it answers GET /ping."""
        proc = self.start("api", harness.api_command(number(stage), port), env)
        url = f"http://{harness.HOST}:{port}"
        harness.wait_until(lambda: harness.api_answers(url), f"{proc.name} on {url}", [proc])
        return proc

    def worker(self, stage: Any, env: dict[str, str]) -> Proc:
        """`arq <stage>.worker.WorkerSettings`, once it has connected to Redis and polls."""
        proc = self.start("worker", harness.worker_command(number(stage)), env)
        harness.wait_until(lambda: harness.worker_polls(proc), f"{proc.name} to poll", [proc])
        return proc

    def runner(self, stage: Any, port: int, data_dir: Path, env: dict[str, str]) -> Proc:
        """`python -m devkit.run`, once its API answers."""
        proc = self.start("runner", runner_command(stage, port, data_dir), env)
        url = f"http://{harness.HOST}:{port}"
        harness.wait_until(lambda: harness.api_answers(url), f"the runner's API on {url}", [proc])
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.started):
            if proc.running():
                proc.kill_all()
            proc.wait_or_kill(STOP_DEADLINE_S)


def number(stage: Any) -> int:
    """A stage number, from the `stage` fixture or a plain int."""
    return stage if isinstance(stage, int) else stage.number


def runner_command(stage: Any, port: int, data_dir: Path) -> list[str]:
    return [sys.executable, "-m", "devkit.run", "--stage", str(number(stage)),
            "--port", str(port), "--data-dir", str(data_dir)]  # fmt: skip


def stage_env(redis_url: str | None, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a stage's processes read their Settings from."""
    return harness.stage_env(data_dir, redis_url, **extra)


__all__ = ["SCALE", "Proc", "Processes", "free_port", "runner_command", "stage_env"]
