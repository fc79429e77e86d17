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
"""

from __future__ import annotations

import asyncio
import importlib
import os
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

pytest_plugins = ["tests.browser"]  # the `chromium` fixture


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
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey"), persist=False) as server:
        yield server.url


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
