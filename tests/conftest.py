"""Shared fixtures: one test suite, run against every stage that has the behaviour.

- `stage`: parametrized over the stage packages. `@pytest.mark.since_stage(n)` limits a test to
  stage n and later, `@pytest.mark.until_stage(n)` to stage n and earlier (a limitation a later
  stage removes). Stages outside the range are not generated at all, rather than skipped.
  `@pytest.mark.stages(2, 4)` picks the stages themselves, where a costly test's behaviour
  differs only between some of them.
- Redis is real: one throwaway embedded Valkey per session (or REDIS_URL when set), flushed
  before each test.
- `drain()` runs the stage's own WorkerSettings as an in-process burst worker: it returns when
  the queue is empty, so a test needs no sleep to "wait for the worker".
- A test that starts a process says so, with `@pytest.mark.e2e` (or `browser`, for Chromium):
  `make check` runs only the tests with neither, in about a minute. The session's Valkey is
  the one process they share. A test that starts another without the marker fails, naming
  what it started (ProcessWatch below), so the split stays honest.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from arq.worker import Worker
from fastapi.testclient import TestClient

from devkit.stages import STAGES
from devkit.valkey import EmbeddedValkey
from tests.helpers import run_burst_worker

pytest_plugins = ["tests.browser", "tests.postgres"]  # `chromium`; `postgres_admin`, ...

# Markers that say a test starts processes; `make check` deselects them.
PROCESS_MARKERS = ("e2e", "browser")
# What starting a program raises as an audit event (sys.addaudithook), whatever the API used.
PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.system",
                            "os.exec", "os.fork", "os.forkpty"})  # fmt: skip
# Not a process a test starts: matplotlib runs fontconfig's `fc-list` the first time it is
# used on a machine, to build its font cache (a chart test on a fresh clone).
NOT_THE_TESTS = frozenset({"fc-list"})


class ProcessWatch:
    """Sees every process a test starts; a test without a process marker may start none."""

    def __init__(self) -> None:
        self.watching = False
        self.shared = 0  # > 0 while a fixture starts the process every test shares
        self.started: list[str] = []

    def audit(self, event: str, args: tuple) -> None:
        if event in PROCESS_EVENTS and self.watching and not self.shared:
            program = args[1] if event == "subprocess.Popen" else args[0] if args else ""
            command = program if isinstance(program, (list, tuple)) else [program]
            if command and Path(str(command[0])).name in NOT_THE_TESTS:
                return
            self.started.append(f"{event}: {program}"[:200])

    @contextlib.contextmanager
    def shared_process(self):
        self.shared += 1
        try:
            yield
        finally:
            self.shared -= 1

    def phase(self, item: pytest.Item):
        self.started, self.watching = (
            [],
            not any(item.get_closest_marker(m) for m in PROCESS_MARKERS),
        )
        try:
            result = yield
        finally:
            self.watching = False
        if self.started:
            pytest.fail(
                f"{item.nodeid} started a process without saying so: mark it "
                f"@pytest.mark.e2e (or browser), or `make check` runs it: {self.started}",
                pytrace=False,
            )
        return result


WATCH = ProcessWatch()
sys.addaudithook(WATCH.audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    return (yield from WATCH.phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    return (yield from WATCH.phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item):
    return (yield from WATCH.phase(item))


@dataclass(frozen=True)
class Stage:
    number: int
    package: str

    def module(self, name: str) -> ModuleType:
        return importlib.import_module(f"{self.package}.{name}")

    @property
    def has_worker(self) -> bool:
        return self.number >= 2

    def __str__(self) -> str:
        return f"stage{self.number}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stage" not in metafunc.fixturenames:
        return
    since = metafunc.definition.get_closest_marker("since_stage")
    until = metafunc.definition.get_closest_marker("until_stage")
    low = since.args[0] if since else min(STAGES)
    high = until.args[0] if until else max(STAGES)
    only = metafunc.definition.get_closest_marker("stages")
    numbers = [n for n in sorted(STAGES) if low <= n <= high and (not only or n in only.args)]
    metafunc.parametrize(
        "stage", [Stage(n, STAGES[n]) for n in numbers], ids=[f"stage{n}" for n in numbers]
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis the tests may flush: REDIS_URL if given, else our own Valkey."""
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), persist=False)
    with WATCH.shared_process():  # the one process the fast lane's tests share
        server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    client = redis.Redis.from_url(redis_server)
    client.flushdb()
    client.close()
    return redis_server


@pytest.fixture
def settings_env(
    stage: Stage, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point the stage's Settings (read from the environment) at the test servers."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    stage.module("config").get_settings.cache_clear()
    yield
    stage.module("config").get_settings.cache_clear()


@pytest.fixture
def app(stage: Stage, settings_env: None) -> Any:
    return stage.module("main").app


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def drain(stage: Stage, redis_url: str, settings_env: None) -> Callable[..., Worker]:
    """Run every queued job to the end in an in-process burst worker; returns the worker."""
    if not stage.has_worker:
        pytest.fail(f"{stage} has no worker; mark the test since_stage(2)")

    def run(**overrides: Any) -> Worker:
        return asyncio.run(run_burst_worker(stage, redis_url, **overrides))

    return run


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
