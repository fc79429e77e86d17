"""jobkit.redis_pool: every command has a deadline, and a timed-out connection is not reused."""

import asyncio
import socket
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobkit.redis_pool import open_pool

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
