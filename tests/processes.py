"""Real processes for the failure-injection tests: start uvicorn / arq / the runner, signal
them, read their output, and never leave one behind.

Every process gets its own process group, so a SIGKILL reaches it and everything it started
(the runner's children included), and its output goes to a file rather than a pipe, so a
chatty process can never block on a full pipe while the test is busy elsewhere.

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
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil

from devkit.valkey import free_port
from tests.helpers import poll

# `make test` runs each scenario at a size that takes seconds; `make chaos` sets
# CHAOS_SCALE=full for the longer versions.
SCALE = "full" if os.environ.get("CHAOS_SCALE") == "full" else "smoke"
START_DEADLINE_S = 30.0  # a cold Python start on a busy 2-core machine can take seconds
STOP_DEADLINE_S = 15.0


class Proc:
    """One process (and its process group), its output in `<log_dir>/<name>.log`."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path):
        self.name, self.command, self.log = name, command, log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send `signum` to the whole process group (nothing if it has already gone)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process group and reap it: what a crash or the OOM killer does."""
        self.signal(signal.SIGKILL)
        self.process.wait(STOP_DEADLINE_S)
        self._out.close()

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

    def terminate(self, deadline_s: float = STOP_DEADLINE_S) -> int:
        """SIGTERM to the process only (as a supervisor sends it); wait for it to exit."""
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(deadline_s)
        self._out.close()
        return code

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} {'running' if self.running() else 'exited'}>"


class Processes:
    """Starts processes for one test and kills every one of them on exit, failure or not."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Proc] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Proc:
        taken = sum(1 for p in self.started if p.name.split("#")[0] == name)
        unique = f"{name}#{taken + 1}" if taken else name
        proc = Proc(
            unique, command, {**env, "PYTHONUNBUFFERED": "1"}, self.log_dir / f"{unique}.log"
        )
        self.started.append(proc)
        return proc

    def api(self, stage: Any, port: int, env: dict[str, str]) -> Proc:
        """`uvicorn <stage>.main:app` on 127.0.0.1:port, once it answers GET /ping."""
        proc = self.start(
            "api",
            [sys.executable, "-m", "uvicorn", f"{stage.package}.main:app",
             "--host", "127.0.0.1", "--port", str(port)],
            env,
        )  # fmt: skip
        poll(lambda: answers(port, proc), START_DEADLINE_S, f"{proc.name} on port {port}")
        return proc

    def worker(self, stage: Any, env: dict[str, str]) -> Proc:
        """`arq <stage>.worker.WorkerSettings`, once it has connected to Redis and polls."""
        command = [sys.executable, "-m", "arq", f"{stage.package}.worker.WorkerSettings"]
        proc = self.start("worker", command, env)
        poll(lambda: started_polling(proc), START_DEADLINE_S, f"{proc.name} to start")
        return proc

    def runner(self, stage: Any, port: int, data_dir: Path, env: dict[str, str]) -> Proc:
        """`python -m devkit.run`, once its API answers."""
        proc = self.start(
            "runner",
            [sys.executable, "-m", "devkit.run", "--stage", str(stage.number),
             "--port", str(port), "--data-dir", str(data_dir)],
            env,
        )  # fmt: skip
        poll(lambda: answers(port, proc), START_DEADLINE_S, f"the runner's API on port {port}")
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.started):
            if proc.running():
                proc.kill_all()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(STOP_DEADLINE_S)
            proc._out.close()


def answers(port: int, proc: Proc) -> bool:
    if not proc.running():
        raise AssertionError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.output()}")
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def started_polling(proc: Proc) -> bool:
    if not proc.running():
        raise AssertionError(f"{proc.name} exited with {proc.process.returncode}:\n{proc.output()}")
    return "Starting worker for" in proc.output() and "redis_version=" in proc.output()


def stage_env(redis_url: str | None, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment a stage's processes read their Settings from."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATA_DIR")}
    env["DATA_DIR"] = str(data_dir)
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


__all__ = ["SCALE", "Proc", "Processes", "free_port", "stage_env"]
