"""One stage as processes: the only place that knows how a stage is started and stopped.

The runner (`make run`), the benchmark (`make bench`), the load tests and the end-to-end
tests all start a stage the same way, through this module:
- the command lines: `uvicorn <stage>.main:app` and `arq <stage>.worker.WorkerSettings`;
- the environment a stage's Settings read (REDIS_URL, DATA_DIR, ...);
- when a process is ready: the API answers GET /ping, a worker has connected and polls;
- how a process stops: SIGTERM to its process group, SIGKILL if it does not go in time.

    with StageProcesses(stage=2, data_dir=Path(".data/try")) as stack:  # own Valkey, API, 1 worker
        httpx.post(f"{stack.url}/tasks/add", json={"x": 1, "y": 2})
    # leaving the block stops the workers, then the API, then Valkey

Each process has its own process group, so a Ctrl-C in the terminal reaches only the
parent, which stops the children in order. Output goes to a log file (never a pipe nobody
reads, which blocks a chatty child), or line by line to a callback (the runner's prefixes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import httpx

from devkit.stages import ROOT, STAGES
from devkit.valkey import EmbeddedValkey, free_port

HOST = "127.0.0.1"
READY_TIMEOUT_S = 30.0  # a cold Python start on a busy 2-core machine can take seconds
STOP_TIMEOUT_S = 10.0  # then SIGKILL; stage 4's worker waits 8 s for its running jobs
PING_TIMEOUT_S = 1.0
POLL_EVERY_S = 0.05
# ARQ logs these once it has connected to Redis and starts polling the queue.
WORKER_READY_LINES = ("Starting worker for", "redis_version=")


class NotReady(RuntimeError):
    """A process exited during start-up, or did not get ready in time."""


# -- what a stage is made of ------------------------------------------------------------------


# A stage is its number. A module name instead (`make bench`'s yardstick, devkit.bare_app)
# is one module that holds both the `app` and the `WorkerSettings`, and runs the same way.
Runnable = int | str


def has_worker(stage: Runnable) -> bool:
    return isinstance(stage, str) or (ROOT / STAGES[stage] / "worker.py").exists()


def api_target(stage: Runnable) -> str:
    return f"{stage}:app" if isinstance(stage, str) else f"{STAGES[stage]}.main:app"


def worker_target(stage: Runnable) -> str:
    module = stage if isinstance(stage, str) else f"{STAGES[stage]}.worker"
    return f"{module}.WorkerSettings"


def api_command(stage: Runnable, port: int, *extra: str, host: str = HOST) -> list[str]:
    """`uvicorn <stage>.main:app`; `extra` e.g. ("--no-access-log",)."""
    return [sys.executable, "-m", "uvicorn", api_target(stage),
            "--host", host, "--port", str(port), *extra]  # fmt: skip


def worker_command(stage: Runnable, *extra: str) -> list[str]:
    """`arq <stage>.worker.WorkerSettings`; `extra` e.g. ("--burst",)."""
    return [sys.executable, "-m", "arq", worker_target(stage), *extra]


def stage_env(
    data_dir: Path,
    redis_url: str | None = None,
    base: Mapping[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment a stage's processes read their Settings from: `base` (default: ours)
    without its REDIS_URL and DATA_DIR, then these. Never the machine's Redis by accident."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in ("REDIS_URL", "DATA_DIR")}  # fmt: skip
    env |= {"DATA_DIR": str(data_dir), **extra}
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


# -- one process ------------------------------------------------------------------------------


class Process:
    """One child in its own process group. `start()` again restarts it (same log, appended).

    Output: to `log` if given, else line by line to `on_line` if given, else nowhere.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        env: Mapping[str, str],
        *,
        log: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ):
        # Unbuffered: readiness is read from the output, which must not wait in a buffer.
        self.name, self.command, self.env = name, command, {**env, "PYTHONUNBUFFERED": "1"}
        self.log, self.on_line = log, on_line
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = -1  # start() counts the first start too

    def start(self) -> Process:
        out: int | object = subprocess.PIPE if self.on_line and not self.log else subprocess.DEVNULL
        with contextlib.ExitStack() as stack:
            if self.log is not None:
                out = stack.enter_context(self.log.open("ab"))
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT,
                process_group=0,  # a Ctrl-C reaches only our parent, which stops us in order
            )  # fmt: skip
        if self.process.stdout is not None:
            threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()
        self.restarts += 1
        return self

    def _pump(self, stream) -> None:
        assert self.on_line is not None
        with stream:
            for line in stream:
                self.on_line(line.decode(errors="replace").rstrip())

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while it runs (or before it started)."""
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def signal(self, signum: int) -> None:
        """Send `signum` to the whole process group (nothing if it has already gone)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)

    def stop(
        self, timeout_s: float = STOP_TIMEOUT_S, interrupt: threading.Event | None = None
    ) -> int | None:
        """SIGTERM, as a supervisor sends it; SIGKILL after `timeout_s`, or as soon as
        `interrupt` is set (a second Ctrl-C). The exit code."""
        if self.running():
            self.signal(signal.SIGTERM)
        return self.wait_or_kill(timeout_s, interrupt)

    def wait_or_kill(
        self, timeout_s: float, interrupt: threading.Event | None = None
    ) -> int | None:
        self.wait(time.monotonic() + timeout_s, interrupt)
        if self.running():
            self.kill()
        return self.exit_code()

    def wait(self, deadline: float, interrupt: threading.Event | None = None) -> None:
        """Until it exits, the monotonic `deadline` passes or `interrupt` is set."""
        while self.running() and time.monotonic() < deadline:
            if interrupt is not None and interrupt.is_set():
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(min(POLL_EVERY_S, max(0.0, deadline - time.monotonic())))

    def kill(self) -> None:
        """SIGKILL the process group and reap it: what a crash or the OOM killer does."""
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(STOP_TIMEOUT_S)

    def __repr__(self) -> str:
        state = "running" if self.running() else f"exited {self.exit_code()}"
        return f"<{self.name} pid={self.process.pid if self.process else '-'} {state}>"


# -- when a process is ready ------------------------------------------------------------------


def wait_until(
    check: Callable[[], object],
    what: str,
    watch: Iterable[Process] = (),
    timeout_s: float = READY_TIMEOUT_S,
) -> None:
    """Poll `check` until it is truthy. NotReady if a `watch`ed process exits first."""
    deadline = time.monotonic() + timeout_s
    while not check():
        for proc in watch:
            if (code := proc.exit_code()) is not None:
                tail = proc.output()[-3000:]
                raise NotReady(f"{proc.name} exited with code {code} while waiting for {what}"
                               + (f":\n{tail}" if tail else ""))  # fmt: skip
        if time.monotonic() > deadline:
            raise NotReady(f"{what} was not ready within {timeout_s:.0f} s")
        time.sleep(POLL_EVERY_S)


def api_answers(url: str) -> bool:
    """GET /ping answers 200: the process is up and its event loop is free."""
    try:
        return httpx.get(f"{url}/ping", timeout=PING_TIMEOUT_S).status_code == 200
    except httpx.HTTPError:
        return False


def worker_polls(worker: Process) -> bool:
    """The worker has connected to Redis and polls the queue (from its log)."""
    output = worker.output()
    return all(line in output for line in WORKER_READY_LINES)


# -- a whole stage ----------------------------------------------------------------------------


class AlreadyRunning(RuntimeError):
    """Another live process runs a stage from this data folder."""

    def __init__(self, data_dir: Path, owner: str):
        super().__init__(f"{data_dir} is in use by {owner}")
        self.data_dir, self.owner = data_dir, owner


class DataDirLock:
    """One stage instance per data folder: two would share a Valkey (and its pid file) and
    a jobs.db. An flock, not just a pid file: the kernel drops it when its holder dies,
    even by SIGKILL, so a crashed run never blocks the next. The file says who holds it."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "running.lock"
        self.file = None

    def acquire(self, owner: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise AlreadyRunning(self.path.parent, holder) from None
        file.truncate(0)
        file.write(owner)
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            self.file.truncate(0)
            self.file.close()  # closing drops the flock
            self.file = None


class StageProcesses:
    """A stage's Valkey (unless `redis_url` is given), API and `workers` ARQ workers.

    `data_dir` is the stage's DATA_DIR (its jobs.db), and holds Valkey's files
    (`valkey/`), the logs (`api-1.log`, `worker-1.log`, ...) and a lock that keeps a second
    instance out. With `on_line`, output goes to `on_line(name, line)` instead of the logs,
    and start() does not wait for the workers (their "polling" line is not in a log).
    """

    def __init__(
        self,
        stage: Runnable,
        data_dir: Path,
        *,
        workers: int = 1,
        port: int | None = None,
        host: str = HOST,
        redis_url: str | None = None,
        persist: bool = False,
        api_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str, str], None] | None = None,
        variant: str | None = None,
    ):
        self.stage, self.data_dir, self.workers_wanted = stage, Path(data_dir), workers
        self.variant = variant  # devkit.variant: a performance choice undone, for make bench
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.has_worker = has_worker(stage)
        self.redis_url, self.persist, self.api_args = redis_url, persist, api_args
        self.on_line = on_line
        self.env = stage_env(self.data_dir, redis_url, base=env)
        self.lock = DataDirLock(self.data_dir)
        self.valkey: EmbeddedValkey | None = None
        self.api: Process | None = None
        self.api_logs: list[Path] = []
        self.workers: list[Process] = []

    def claim(self) -> None:
        """Take the data folder, or raise AlreadyRunning naming its holder."""
        if self.lock.file is None:
            self.lock.acquire(f"pid {os.getpid()}, {self.url}")

    def start(self) -> StageProcesses:
        self.claim()
        try:
            if self.has_worker and self.redis_url is None:
                self.start_valkey()
            self.start_api()
            for _ in range(self.workers_wanted if self.has_worker else 0):
                self.start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def start_valkey(self) -> EmbeddedValkey:
        self.valkey = EmbeddedValkey(self.data_dir / "valkey", persist=self.persist)
        self.valkey.start()
        self.redis_url = self.env["REDIS_URL"] = self.valkey.url
        return self.valkey

    def start_api(self, wait: bool = True) -> Process:
        """Start (or, after kill_api, start again) the API; wait until it answers /ping."""
        command = api_command(self.stage, self.port, *self.api_args, host=self.host)
        self.api = self._process("api", f"api-{len(self.api_logs) + 1}", command)
        if self.api.log is not None:
            self.api_logs.append(self.api.log)
        self.api.start()
        if wait:
            wait_until(lambda: api_answers(self.url), f"the API on {self.url}", [self.api])
        return self.api

    def start_worker(self, *extra: str, wait: bool = True) -> Process:
        """One more ARQ worker; unless `on_line` takes its output, wait until it polls."""
        n = len(self.workers) + 1
        name = "worker" if self.workers_wanted <= 1 else f"worker-{n}"
        worker = self._process(name, f"worker-{n}", worker_command(self.stage, *extra))
        self.workers.append(worker.start())
        if wait and worker.log is not None and "--burst" not in extra:
            wait_until(lambda: worker_polls(worker), f"{worker.name} to poll", [worker])
        return worker

    def _process(self, name: str, log_name: str, command: list[str]) -> Process:
        if self.variant is not None:  # python -m devkit.variant <variant> -m uvicorn|arq ...
            command = [command[0], "-m", "devkit.variant", self.variant, *command[1:]]
        if self.on_line is not None:
            on_line = self.on_line
            return Process(name, command, self.env, on_line=lambda line: on_line(name, line))
        return Process(name, command, self.env, log=self.data_dir / f"{log_name}.log")

    def kill_api(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown, no finishing of tasks."""
        if self.api is not None:
            self.api.kill()

    def stop(self) -> None:
        """Workers first (they finish or put back their jobs), then the API, then Valkey."""
        stop_together(self.workers)
        if self.api is not None:
            self.api.stop()
        if self.valkey is not None:
            self.valkey.stop()
            self.valkey = None
        self.lock.release()

    def pids(self) -> list[int]:
        """The stage's running processes: API, workers, Valkey."""
        procs = [self.api, *self.workers]
        pids = [proc.pid for proc in procs if proc is not None and proc.running()]
        if self.valkey is not None and self.valkey.process is not None:
            pids.append(self.valkey.process.pid)
        return pids

    def __enter__(self) -> StageProcesses:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_together(
    procs: Iterable[Process],
    timeout_s: float = STOP_TIMEOUT_S,
    interrupt: threading.Event | None = None,
) -> list[Process]:
    """SIGTERM them all at once, then wait: N workers stop in one timeout, not N. Those still
    running after it, or once `interrupt` is set, are SIGKILLed; returns them."""
    running = [proc for proc in procs if proc.running()]
    for proc in running:
        proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in running:
        proc.wait(deadline, interrupt)
    killed = [proc for proc in running if proc.running()]
    for proc in killed:
        proc.kill()
    return killed
