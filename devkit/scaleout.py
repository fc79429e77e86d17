"""`make scaleout`: stage 4 as it runs past one machine, on this one.

    python -m devkit.scaleout [--apis 2] [--workers 3] [--data-dir .data/scaleout]

- Redis that fails over: a Valkey primary, a replica and three sentinels (devkit/topology.py),
  on 127.25.0.1 to .5; the stages reach it with a `redis+sentinel://` REDIS_URL.
- The ledger in PostgreSQL (devkit/postgres.py), on a Unix socket in a throwaway folder.
- APIs on 127.25.1.1, .2, ... port 8000, each its own uvicorn.
- Workers, each a "host" of its own: 127.25.2.1, .2, ...; its own WORKER_ID (host-1, ...),
  data folder, and metrics port 9100 on its own address (GET /queue lists them).

ARQ workers do not reconnect: one that loses Redis (a failover) exits, and this supervisor
starts it again after RESTART_DELAY_S, as systemd's `Restart=always` or Kubernetes would.
Ctrl-C (or SIGTERM, or closing the terminal) stops the workers, the APIs, Redis and
PostgreSQL, in that order, then checks that nothing is left. It refuses to start when one of
its addresses is in use, and an API that exits ends the run, as in `make run`.
The failover tests (tests/test_scaleout.py) start the same topology through `ScaleOut`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from devkit import harness
from devkit.postgres import own_postgres, throwaway_database
from devkit.topology import ReplicatedValkey, can_bind, free_network
from devkit.topology import addresses as redis_addresses

NETWORK = 25  # 127.25.x.y, the addresses the guide shows; the tests pick a free network
API_PORT = 8000
METRICS_PORT = 9100
RESTART_DELAY_S = 0.5  # a worker that exited starts again after this (systemd's RestartSec)
STAGE = 4


@dataclass
class Host:
    """One worker or API "host": its address, and the process that runs on it."""

    name: str
    address: str
    process: harness.Process


class Fatal(RuntimeError):
    """Something the run cannot go on without: an address in use, an API that exited."""


def addresses(network: int, apis: int, workers: int) -> list[tuple[str, int]]:
    """Every address a ScaleOut on 127.<network> listens on: Redis, APIs, worker metrics."""
    return [
        *redis_addresses(network),
        *((f"127.{network}.1.{n}", API_PORT) for n in range(1, apis + 1)),
        *((f"127.{network}.2.{n}", METRICS_PORT) for n in range(1, workers + 1)),
    ]


def pick_network(apis: int, workers: int) -> int:
    """A 127.N network where every address of such a ScaleOut is free (the tests' choice)."""
    return free_network(lambda network: addresses(network, apis, workers))


class ScaleOut:
    """Redis with sentinels, PostgreSQL, `apis` APIs and `workers` workers; `start()`, then
    `supervise()` in a thread while it runs, and `stop()`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        apis: int = 2,
        workers: int = 3,
        network: int = NETWORK,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.network, self.api_count, self.worker_count = network, apis, workers
        self.env, self.on_line = dict(env or {}), on_line
        self.redis = ReplicatedValkey(self.data_dir / "redis", network)
        self.apis: list[Host] = []
        self.workers: list[Host] = []
        self.restarts: list[tuple[str, float]] = []  # (worker, when it exited), for the tests
        self.database_url = ""
        self.held: set[str] = set()  # workers not to start again: a host that died for good
        self._postgres = contextlib.ExitStack()

    @property
    def api_urls(self) -> list[str]:
        return [f"http://{host.address}:{API_PORT}" for host in self.apis]

    def check_free(self) -> None:
        """Refuse to start over anything that listens on one of our addresses: an old run's
        API would answer our readiness checks, and take our requests."""
        busy = [f"{host}:{port}" for host, port in
                addresses(self.network, self.api_count, self.worker_count)
                if not can_bind(host, port)]  # fmt: skip
        if busy:
            raise Fatal(f"already in use: {', '.join(busy)} (another scaleout still running? "
                        "stop it first)")  # fmt: skip

    def start(self) -> None:
        self.check_free()
        self.redis.start()
        conninfo = self._postgres.enter_context(own_postgres())
        self.database_url = self._postgres.enter_context(throwaway_database(conninfo))
        for n in range(1, self.api_count + 1):
            self.apis.append(self._api(n))
        for _ in range(self.worker_count):
            self.add_worker(wait=False)
        for host in self.apis:
            url = f"http://{host.address}:{API_PORT}"
            harness.wait_until(lambda url=url: harness.api_answers(url), url, [host.process])
        for host in self.workers:
            self.wait_for(host)

    def add_worker(self, wait: bool = True) -> Host:
        """One more worker host, the next address; `wait`: until it polls the queue."""
        host = self._worker(len(self.workers) + 1)
        self.workers.append(host)
        if wait:
            self.wait_for(host)
        return host

    def remove_worker(self) -> None:
        """Stop the last worker host (SIGTERM: its running jobs go back to the queue)."""
        host = self.workers.pop()
        harness.stop_together([host.process])

    @staticmethod
    def wait_for(host: Host) -> None:
        harness.wait_until(lambda: harness.worker_polls(host.process), host.name, [host.process])

    def _env(self, name: str, **extra: str) -> dict[str, str]:
        folder = self.data_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        return harness.stage_env(folder, self.redis.url, base={**os.environ, **self.env},
                                 DATABASE_URL=self.database_url, **extra)  # fmt: skip

    def _process(self, name: str, command: list[str], env: dict[str, str]) -> harness.Process:
        log = self.data_dir / "logs" / f"{name}.log"  # a test or a reader looks there
        log.parent.mkdir(parents=True, exist_ok=True)
        return harness.Process(name, command, env, log=log).start()

    def _api(self, n: int) -> Host:
        address, name = f"127.{self.network}.1.{n}", f"api-{n}"
        command = harness.api_command(STAGE, API_PORT, "--no-access-log", host=address)
        return Host(name, address, self._process(name, command, self._env(name)))

    def _worker(self, n: int) -> Host:
        address, name = f"127.{self.network}.2.{n}", f"host-{n}"
        env = self._env(name, WORKER_ID=name, WORKER_METRICS_HOST=address,
                        WORKER_METRICS_PORT=str(METRICS_PORT))  # fmt: skip
        return Host(name, address, self._process(name, harness.worker_command(STAGE), env))

    def supervise(self, stop: threading.Event) -> None:
        """Start again, after RESTART_DELAY_S, every worker that exited, until `stop`.
        An API that exits ends the run (Fatal), as in `make run`: nothing restarts it."""
        while not stop.wait(0.1):
            for host in self.apis:
                if (code := host.process.exit_code()) is not None:
                    raise Fatal(f"{host.name} exited with code {code}; see its log in "
                                f"{self.data_dir / 'logs'}")  # fmt: skip
            exited = [host for host in self.workers if self.exited(host)]
            for host in exited:
                self.restarts.append((host.name, time.monotonic()))
                code = host.process.exit_code()
                self.say(f"{host.name} exited with code {code} (ARQ workers do not reconnect); "
                         f"starting it again in {RESTART_DELAY_S} s")  # fmt: skip
            if exited and not stop.wait(RESTART_DELAY_S):
                for host in exited:  # together: after a failover they all left at once
                    host.process.start()

    def exited(self, host: Host) -> bool:
        return host.name not in self.held and host.process.exit_code() is not None

    @contextlib.contextmanager
    def down(self, name: str) -> Iterator[None]:
        """While inside, the worker `name` is a host that died: nothing starts it again."""
        self.held.add(name)
        try:
            yield
        finally:
            self.held.discard(name)

    def say(self, line: str) -> None:
        if self.on_line:
            self.on_line("scaleout", line)

    def stop(self) -> None:
        harness.stop_together([host.process for host in self.workers])
        harness.stop_together([host.process for host in self.apis])
        self.redis.stop()
        self._postgres.close()

    def left_behind(self) -> list[str]:
        """Our processes still alive after stop(), and addresses still listening."""
        alive = [f"{p.name()} (pid {p.pid})" for p in psutil.Process().children(recursive=True)
                 if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # fmt: skip
        listening = [f"{host}:{port}" for host, port in
                     addresses(self.network, self.api_count, self.worker_count)
                     if not can_bind(host, port)]  # fmt: skip
        return alive + listening

    def __enter__(self) -> ScaleOut:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.scaleout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--apis", type=int, default=2, choices=range(1, 10))
    parser.add_argument("--workers", type=int, default=3, choices=range(1, 100))
    parser.add_argument("--data-dir", type=Path, default=Path(".data/scaleout"))
    parser.add_argument("--for-seconds", type=float, default=None, help="then stop (the docs' run)")
    args = parser.parse_args(argv)

    def on_line(name: str, line: str) -> None:
        print(f"{name:>9} | {line}", flush=True)

    scaleout = ScaleOut(args.data_dir, apis=args.apis, workers=args.workers, network=NETWORK,
                        on_line=on_line)  # fmt: skip
    try:
        scaleout.check_free()
    except Fatal as exc:
        on_line("scaleout", f"error: {exc}")
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
        signal.signal(signum, lambda *_: stop.set())
    code = 0
    try:
        scaleout.start()
        on_line("scaleout", f"REDIS_URL={scaleout.redis.url}")
        on_line("scaleout", f"APIs: {' '.join(scaleout.api_urls)}  (Ctrl-C stops it all)")
        on_line("scaleout", f"workers: {' '.join(h.name for h in scaleout.workers)}; "
                            f"logs in {scaleout.data_dir / 'logs'}")  # fmt: skip
        if args.for_seconds is not None:
            threading.Timer(args.for_seconds, stop.set).start()
        scaleout.supervise(stop)
    except (RuntimeError, harness.NotReady) as exc:
        on_line("scaleout", f"error: {exc}")
        code = 1
    finally:
        scaleout.stop()
    if left := scaleout.left_behind():
        on_line("scaleout", f"stopped; left behind: {', '.join(left)}")
        return 1
    on_line("scaleout", "stopped; no process left behind")
    return code


if __name__ == "__main__":
    sys.exit(main())
