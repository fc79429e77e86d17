"""The servers the FAQ says the stages are tested on: each stage's whole job cycle on each.

The embedded Valkey, and Debian 12's `redis-server` (Redis 7.0, from `make tools`), each
started here on a free loopback port and thrown away, never the system's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from devkit.valkey import EmbeddedValkey, free_port
from tests.helpers import enqueue, job, poll, run_burst_worker
from tests.processes import Processes
from tests.tools import require

pytestmark = pytest.mark.e2e  # servers of its own, one per test

START_DEADLINE_S = 10.0


@pytest.fixture(params=["embedded-valkey", "redis-server"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict]]:
    """(url, INFO server section) of a throwaway server of that kind."""
    if request.param == "embedded-valkey":
        with EmbeddedValkey(tmp_path / "valkey", persist=False) as valkey:
            yield valkey.url, redis.Redis.from_url(valkey.url).info("server")
        return
    binary = require("redis-server")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    with Processes(tmp_path / "logs") as procs:
        procs.start("redis-server", command, {})
        client = redis.Redis.from_url(url)
        poll(lambda: _answers(client), START_DEADLINE_S, "redis-server to answer")
        yield url, client.info("server")


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.since_stage(2)
def test_every_stage_runs_its_jobs_on_each_server_the_faq_names(
    stage, server, tmp_path, monkeypatch
):
    url, info = server
    if "valkey_version" in info:
        assert info["valkey_version"].startswith("9."), info
    else:
        assert info["redis_version"].startswith("7."), info
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    stage.module("config").get_settings.cache_clear()
    try:
        with TestClient(stage.module("main").app) as client:
            added = enqueue(client, "add", {"x": 5, "y": 10})
            divided = enqueue(client, "divide", {"x": 1, "y": 0})
            asyncio.run(run_burst_worker(stage, url))
            assert job(client, added)["status"] == "complete"
            assert job(client, added)["result"] == 15
            assert job(client, divided)["status"] == "failed"
    finally:
        stage.module("config").get_settings.cache_clear()
