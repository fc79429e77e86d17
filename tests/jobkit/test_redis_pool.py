"""jobkit.redis_pool: every command has a deadline, and a timed-out connection is not reused."""

import asyncio
import socket
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import jobkit.redis_pool
from jobkit.redis_pool import RedisBusy, open_pool

TIMEOUT_S = 0.3
SLACK_S = 2.0  # what a busy machine may add


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers: a stuck Redis."""
    server = socket.create_server(("127.0.0.1", 0))
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def test_a_command_to_a_silent_redis_fails_after_the_timeout(silent_server):
    async def main() -> float:
        pool = open_pool(silent_server, timeout_s=TIMEOUT_S)
        client = Redis(connection_pool=pool)
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.ping()
        took = time.monotonic() - started
        await client.aclose()
        await pool.aclose()
        return took

    took = asyncio.run(main())
    assert TIMEOUT_S * 0.9 <= took < TIMEOUT_S + SLACK_S


def test_the_pool_talks_to_a_real_redis(redis_url):
    async def main() -> bytes | None:
        pool = open_pool(redis_url, timeout_s=TIMEOUT_S)
        client = Redis(connection_pool=pool)
        await client.set("jobkit:test", b"value")
        value = await client.get("jobkit:test")
        await client.aclose()
        await pool.aclose()
        return value

    assert asyncio.run(main()) == b"value"


def test_a_full_pool_is_redis_busy_after_the_timeout_and_counts_its_waiter(redis_url, monkeypatch):
    monkeypatch.setattr(jobkit.redis_pool, "MAX_CONNECTIONS", 1)

    async def main() -> None:
        pool = open_pool(redis_url, timeout_s=TIMEOUT_S)
        held = await pool.get_connection()
        waiting = asyncio.create_task(pool.get_connection())
        await asyncio.sleep(0)  # let it start waiting
        assert pool.waiting == 1
        with pytest.raises(RedisBusy, match="all 1 Redis connections stayed in use"):
            await waiting
        assert pool.waiting == 0
        await pool.release(held)
        await pool.aclose()

    asyncio.run(main())


def test_a_redis_that_refuses_connections_is_not_called_busy():
    closed = socket.create_server(("127.0.0.1", 0))
    url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
    closed.close()  # nothing listens there now

    async def main() -> None:
        pool = open_pool(url, timeout_s=TIMEOUT_S)
        with pytest.raises(RedisConnectionError) as refused:
            await Redis(connection_pool=pool).ping()
        assert not isinstance(refused.value, RedisBusy)
        await pool.aclose()

    asyncio.run(main())
