"""jobkit.redis_pool: the one place a `redis+sentinel://` URL is read, for the API's pool and the
worker's ARQ settings; and the pool's deadline when the sentinels do not answer."""

import asyncio
import pickle
import signal
import socket
import threading
import time

import pytest
from arq.connections import RedisSettings
from fastapi.testclient import TestClient
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobkit.redis_pool import (
    SENTINEL_TIMEOUT_S,
    BoundedSentinelPool,
    SentinelURL,
    arq_pool,
    arq_settings,
    leave_when_primary_moves,
    open_pool,
)
from jobkit.redis_pool import parse_sentinel_url as parse

TIMEOUT_S = 0.3
SLACK_S = 2.0  # what a busy machine may add


def test_a_sentinel_url_names_its_sentinels_the_primary_and_the_database():
    url = "redis+sentinel://:s%40cret@10.0.0.5:26380,10.0.0.6,[::1]:5000/jobs/3"
    assert parse(url) == SentinelURL(
        sentinels=[("10.0.0.5", 26380), ("10.0.0.6", 26379), ("::1", 5000)],
        primary="jobs",
        db=3,
        password="s@cret",
    )


def test_a_plain_redis_url_is_not_a_sentinel_url_and_keeps_its_meaning():
    assert parse("redis://127.0.0.1:6379/2") is None
    assert arq_settings("redis://127.0.0.1:6380/2") == RedisSettings.from_dsn(
        "redis://127.0.0.1:6380/2"
    )


def test_the_workers_arq_settings_ask_the_sentinels_for_the_named_primary():
    settings = arq_settings("redis+sentinel://user:pw@127.0.0.3:1000,127.0.0.4:1001/jobs/1")
    assert settings.sentinel is True
    assert settings.host == [("127.0.0.3", 1000), ("127.0.0.4", 1001)]
    assert (settings.sentinel_master, settings.database) == ("jobs", 1)
    assert (settings.username, settings.password) == ("user", "pw")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://127.0.0.1:26379", "primary-name"),
        ("redis+sentinel://127.0.0.1:26379/", "primary-name"),
        ("redis+sentinel://127.0.0.1:26379/jobs/0/extra", "primary-name"),
        ("redis+sentinel://127.0.0.1:26379/jobs/zero", "database must be a number"),
        (
            "redis+sentinel://127.0.0.1:26379/jobs/\u0663",
            "database must be a number",
        ),  # an Arabic 3
        (
            "redis+sentinel://127.0.0.1:26379/jobs/\u00b2",
            "database must be a number",
        ),  # a superscript
        ("redis+sentinel://127.0.0.1:26379/jobs/-1", "database must be a number"),
        ("redis+sentinel://127.0.0.1:26379/jobs/99999999999999999999", "database must be"),
        ("redis+sentinel://127.0.0.1:99999/jobs", "bad port"),
        ("redis+sentinel://127.0.0.1:port/jobs", "bad port"),
        ("redis+sentinel://127.0.0.1:0/jobs", "bad port"),
        ("redis+sentinel://127.0.0.1:/jobs", "bad port"),
        ("redis+sentinel://127.0.0.1:\u0663\u0663/jobs", "bad port"),
        ("redis+sentinel://127.0.0.1:+1/jobs", "bad port"),
        ("redis+sentinel://127.0.0.1:26379,,127.0.0.2/jobs", "empty"),
        ("redis+sentinel:///jobs", "empty"),
        ("redis+sentinel://127.0.0.1/jobs?db=1", "no query"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_saying_what_is_wrong(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse(url)
    with pytest.raises(ValueError, match=reason):
        open_pool(url, timeout_s=TIMEOUT_S)


@pytest.fixture
def silent_sentinels():
    """Three TCP servers that accept connections and never answer: stuck sentinels."""
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    hosts = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in servers)
    yield f"redis+sentinel://{hosts}/jobs/0"
    for server in servers:
        server.close()


def test_a_command_fails_within_one_deadline_when_no_sentinel_answers(silent_sentinels):
    timeout_s = 1.0  # three silent sentinels must not cost three of these

    async def main() -> float:
        pool = open_pool(silent_sentinels, timeout_s=timeout_s)
        assert isinstance(pool, BoundedSentinelPool)
        client = Redis(connection_pool=pool)
        started = time.monotonic()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await client.set("key", "value")
        took = time.monotonic() - started
        await client.aclose()
        await pool.aclose()
        return took

    assert asyncio.run(main()) < timeout_s * 2.5


def test_a_workers_pool_passes_over_a_silent_sentinel_within_its_deadline():
    """A silent sentinel first, then two that refuse: ARQ's own pool would wait for the first
    for ever, and a worker starting then hung."""
    silent = socket.create_server(("127.0.0.1", 0))
    closed = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    hosts = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in [silent, *closed])
    for server in closed:
        server.close()

    async def main() -> float:
        redis = arq_pool(f"redis+sentinel://{hosts}/jobs", "arq:queue", pickle.dumps, pickle.loads)
        assert redis is not None
        started = time.monotonic()
        with pytest.raises(RedisConnectionError, match="No master found"):
            await asyncio.wait_for(redis.ping(), SENTINEL_TIMEOUT_S + 10)
        took = time.monotonic() - started
        await redis.aclose()
        return took

    try:
        assert asyncio.run(main()) < SENTINEL_TIMEOUT_S + SLACK_S
    finally:
        silent.close()


def test_a_command_fails_at_once_when_no_sentinel_listens():
    closed = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    hosts = ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in closed)
    for server in closed:
        server.close()

    async def main() -> None:
        pool = open_pool(f"redis+sentinel://{hosts}/jobs", timeout_s=TIMEOUT_S)
        client = Redis(connection_pool=pool)
        with pytest.raises(RedisConnectionError, match="No master found"):
            await client.get("key")
        await client.aclose()
        await pool.aclose()

    asyncio.run(main())


def test_a_worker_on_a_plain_redis_watches_no_sentinel():
    assert leave_when_primary_moves(Redis.from_url("redis://127.0.0.1:1/0")) is None


def test_an_address_that_answers_but_is_not_a_sentinel_is_skipped_like_an_unreachable_one(
    redis_url,
):
    """A plain Redis where a sentinel should be answers SENTINEL with an error reply: that
    address is passed over, as one that does not answer is, and with no sentinel left the
    command fails as "no primary found" (a ConnectionError: the stages' 503)."""
    plain = Redis.from_url(redis_url).connection_pool.connection_kwargs
    url = f"redis+sentinel://{plain['host']}:{plain['port']}/jobs/0"

    async def main() -> None:
        pool = open_pool(url, timeout_s=TIMEOUT_S)
        client = Redis(connection_pool=pool)
        try:
            with pytest.raises(RedisConnectionError, match="No master found"):
                await client.get("key")
        finally:
            await client.aclose()
            await pool.aclose()

    asyncio.run(main())


@pytest.mark.since_stage(2)
def test_an_api_whose_sentinel_is_not_a_sentinel_answers_503_not_500(
    stage, settings_env, redis_url, monkeypatch
):
    plain = Redis.from_url(redis_url).connection_pool.connection_kwargs
    monkeypatch.setenv("REDIS_URL", f"redis+sentinel://{plain['host']}:{plain['port']}/jobs/0")
    stage.module("config").get_settings.cache_clear()
    with TestClient(stage.module("main").app, raise_server_exceptions=False) as client:
        submitted = client.post("/tasks/add", json={"x": 1, "y": 2})
        assert submitted.status_code == 503, submitted.text
        assert client.get("/health").status_code == 503


@pytest.fixture
def garbling_sentinel():
    """A TCP server that answers anything with bytes that are not Redis' protocol."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except OSError:
                continue
            with connection:
                connection.recv(4096)
                connection.sendall(b"?what\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"redis+sentinel://127.0.0.1:{server.getsockname()[1]}/jobs/0"
    done.set()
    thread.join()
    server.close()


def test_a_watcher_that_fails_unexpectedly_says_so_and_the_worker_leaves(garbling_sentinel, caplog):
    received = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())

    async def main() -> None:
        redis = arq_pool(garbling_sentinel, "arq:queue", pickle.dumps, pickle.loads)
        assert redis is not None
        watch = leave_when_primary_moves(redis)
        assert watch is not None
        await asyncio.wait_for(watch, 5 + SLACK_S)
        await redis.aclose()

    try:
        asyncio.run(main())
        assert received.wait(1), "the worker was not told to leave"
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "watching the primary failed" in caplog.text
