"""One stage as real processes on free ports: embedded Valkey, uvicorn, and the ARQ worker.

Each process writes its output to a log file in the run's folder (stage 1's only record of a
finished task is a log line). Everything is started in its own process group and stopped in
order (worker, API, Valkey), so a run leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from devkit.stages import ROOT, STAGES
from devkit.valkey import EmbeddedValkey, free_port

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HOST = "127.0.0.1"
# Stage 1's log line for a finished task, e.g. "INFO tasks: crunch(200 ms) done on the event loop".
DONE_LINE = re.compile(r"\btasks: (\w+)\(.*\) done\b")


class Stack:
    """A stage's processes. `data_dir` is a private folder (Valkey's files, DATA_DIR, logs).

    `workers` ARQ worker processes from stage 2 (each runs up to the stage's MAX_JOBS at once).
    """

    def __init__(self, stage: int, data_dir: Path, workers: int = 1):
        self.stage = stage
        self.workers = workers
        self.package = STAGES[stage]
        self.data_dir = data_dir
        self.has_worker = (ROOT / self.package / "worker.py").exists()
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.valkey: EmbeddedValkey | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.worker_processes: list[subprocess.Popen[bytes]] = []
        self.api_logs: list[Path] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "DATA_DIR": str(data_dir / "data")}
        self.env.pop("REDIS_URL", None)  # never the machine's Redis: our own Valkey below

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.has_worker:
                self.valkey = EmbeddedValkey(self.data_dir / "valkey", persist=False)
                self.valkey.start()
                self.env["REDIS_URL"] = self.valkey.url
            self.start_api()
            for number in range(1, self.workers + 1) if self.has_worker else []:
                log = self.data_dir / ("worker.log" if number == 1 else f"worker-{number}.log")
                self.worker_processes.append(self._spawn(
                    [sys.executable, "-m", "arq", f"{self.package}.worker.WorkerSettings"], log
                ))  # fmt: skip
                ready = lambda log=log: "Starting worker" in log.read_text()  # noqa: E731
                self._wait_for(ready, "the ARQ worker")
        except BaseException:
            self.stop()
            raise

    def start_api(self) -> None:
        log = self.data_dir / f"api-{len(self.api_logs) + 1}.log"
        self.api_logs.append(log)
        # No access log: one line per request would cost the API as much as /ping itself.
        command = [sys.executable, "-m", "uvicorn", f"{self.package}.main:app",
                   "--host", HOST, "--port", str(self.port), "--no-access-log"]  # fmt: skip
        self.api = self._spawn(command, log)
        self._wait_for(self.healthy, f"the API on {self.url}")

    def kill_api(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown, no finishing of tasks."""
        if self.api is not None and self.api.poll() is None:
            self.api.send_signal(signal.SIGKILL)
            self.api.wait()

    def stop(self) -> None:
        for process in (*self.worker_processes, self.api):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.worker_processes, self.api = [], None
        if self.valkey is not None:
            self.valkey.stop()
            self.valkey = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                process_group=0,  # a Ctrl-C in the terminal reaches the runner, which stops us
            )

    def _wait_for(self, check, what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not check():
            for process in (self.api, *self.worker_processes):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{what}: a process exited; see the logs in {self.data_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} was not ready within {READY_TIMEOUT_S:.0f} s")
            time.sleep(0.05)

    # -- what the stage says ----------------------------------------------------------------

    def pids(self) -> list[int]:
        """The stage's own processes: API, workers, Valkey."""
        processes = [self.api, *self.worker_processes, self.valkey.process if self.valkey else None]
        return [process.pid for process in processes if process is not None]

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log_mark(self) -> tuple[int, int]:
        """Where the API log is now; `completions_since` counts from here."""
        log = self.api_logs[-1]
        return len(self.api_logs) - 1, log.stat().st_size if log.exists() else 0

    def completions_since(self, mark: tuple[int, int]) -> dict[str, int]:
        """Stage 1: finished tasks by name, from the API log lines (they have no other record)."""
        counts: dict[str, int] = {}
        first, offset = mark
        for index, log in enumerate(self.api_logs[first:]):
            with log.open("rb") as file:
                file.seek(offset if index == 0 else 0)
                for line in file.read().decode(errors="replace").splitlines():
                    if match := DONE_LINE.search(line):
                        counts[match[1]] = counts.get(match[1], 0) + 1
        return counts
