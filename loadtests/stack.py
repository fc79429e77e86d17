"""One stage as real processes on free ports: embedded Valkey, uvicorn, and the ARQ worker.

Each process writes its output to a log file in the run's folder (stage 1's only record of a
finished task is a log line). Everything is started in its own process group and stopped in
order (worker, API, Valkey), so a run leaves no process behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from devkit import harness
from devkit.stages import STAGES

# Stage 1's log line for a finished task, e.g. "INFO tasks: crunch(200 ms) done on the event loop".
DONE_LINE = re.compile(r"\btasks: (\w+)\(.*\) done\b")


class Stack(harness.StageProcesses):
    """A stage's processes. `data_dir` is a private folder (Valkey's files, DATA_DIR, logs).

    Started and stopped by devkit/harness.py, as `make run` and the tests start a stage;
    what this class adds is what the load test reads: pids, health and the API's log.
    """

    def __init__(self, stage: int, data_dir: Path, workers: int = 1):
        # No access log: one line per request would cost the API as much as /ping itself.
        # Never the machine's Redis: our own throwaway Valkey (redis_url=None).
        super().__init__(stage, data_dir, workers=workers, api_args=("--no-access-log",))
        self.package = STAGES[stage]

    @property
    def worker(self) -> harness.Process | None:
        return self.workers[0] if self.workers else None

    def __enter__(self) -> Stack:
        self.start()
        return self

    # -- what the stage says ----------------------------------------------------------------

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
