"""Stage 2+: a Redis that is stuck (SIGSTOPped: connected, but silent) costs a request about
the Redis timeout and a 503, and once it answers again every request gets its own data.

A stopped server is worse than a dead one: the kernel still accepts connections and takes
commands into its buffers, so nothing fails, and only a timeout ends the wait. A command that
timed out leaves its reply on the way; the connection it was sent on must be thrown away,
or the next command on it reads that stale reply (CVE-2023-28858/28859 in redis-py).
"""

import asyncio
import os
import signal
import time

import pytest
from fastapi.testclient import TestClient
from redis.exceptions import TimeoutError as RedisTimeoutError

from devkit.valkey import EmbeddedValkey
from tests.helpers import enqueue, job

pytestmark = [pytest.mark.since_stage(2), pytest.mark.e2e]  # a Valkey of its own, to stop

REDIS_TIMEOUT_S = 0.5  # the API's REDIS_TIMEOUT_S in this test
SLACK_S = 1.5  # what a busy 2-core machine may add to it
HANG_GUARD_S = 10.0


@pytest.fixture
def stopped_redis(stage, settings_env, tmp_path, monkeypatch):
    server = EmbeddedValkey(tmp_path / "valkey", persist=False)
    server.start()
    monkeypatch.setenv("REDIS_URL", server.url)
    monkeypatch.setenv("REDIS_TIMEOUT_S", str(REDIS_TIMEOUT_S))
    stage.module("config").get_settings.cache_clear()
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


def test_a_stuck_redis_gives_a_503_in_about_the_timeout_and_no_stale_reply_after(
    stage, stopped_redis
):
    pid = stopped_redis.process.pid
    with TestClient(stage.module("main").app) as client:
        before = enqueue(client, "add", {"x": 1, "y": 2})
        os.kill(pid, signal.SIGSTOP)
        for method, path, body in [
            ("POST", "/tasks/add", {"x": 3, "y": 4}),  # stuck at its first command, WATCH
            ("GET", f"/jobs/{before}", None),
            ("POST", "/tasks/add", {"x": 5, "y": 6}),
            ("GET", "/health", None),
        ]:
            started = time.monotonic()
            response = client.request(method, path, json=body)
            took = time.monotonic() - started
            assert response.status_code == 503, (method, path, response.text)
            assert REDIS_TIMEOUT_S * 0.9 <= took < REDIS_TIMEOUT_S + SLACK_S, (path, took)
        os.kill(pid, signal.SIGCONT)

        # Redis now answers the commands that timed out, on connections we dropped. Each
        # request must read its own replies: its own job id, the job's own arguments.
        assert client.get("/health").status_code == 200
        seen = {before: {"x": 1, "y": 2}}
        for n in range(10, 20):
            seen[enqueue(client, "add", {"x": n, "y": -n})] = {"x": n, "y": -n}
        for job_id, args in seen.items():
            view = job(client, job_id)
            assert (view["job_id"], view["function"], view["args"]) == (job_id, "add", args)
            assert view["status"] == "queued"


def test_a_write_a_stuck_redis_never_takes_times_out_and_drops_its_connection(stage, stopped_redis):
    # A command only waits to be written once the kernel's buffers are full: here, one
    # bigger than both ends' buffers together (a few MiB each on loopback).
    size = 64 * 1024 * 1024
    command = [b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % size, b"x" * size, b"\r\n"]
    main = stage.module("main")

    async def scenario() -> float:
        async with main.lifespan(main.app):
            redis = main.app.state.redis
            connection = await redis.connection_pool.get_connection()
            transport = connection._writer.transport
            os.kill(stopped_redis.process.pid, signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                # The guard turns a hang into a plain TimeoutError: not the one expected.
                await asyncio.wait_for(connection.send_packed_command(command), HANG_GUARD_S)
            took = time.monotonic() - started
            assert not connection.is_connected  # half a command on it: never used again
            await redis.connection_pool.release(connection)
            os.kill(stopped_redis.process.pid, signal.SIGCONT)
            assert await redis.ping()  # on a new connection
            # The dropped connection still hands Redis the rest of the command, then closes.
            for _ in range(100):  # 5 s at most
                if not transport.get_write_buffer_size():
                    break
                await asyncio.sleep(0.05)
            return took

    took = asyncio.run(scenario())
    assert REDIS_TIMEOUT_S * 0.9 <= took < REDIS_TIMEOUT_S + SLACK_S, took


def test_a_command_cancelled_while_it_waits_leaves_no_reply_for_the_next_one(stage, stopped_redis):
    # A client that hangs up cancels its request, and with it the command it was waiting on.
    # Its reply still comes, later: on a connection that is kept, the next command reads it.
    main = stage.module("main")

    async def scenario() -> None:
        async with main.lifespan(main.app):
            redis = main.app.state.redis
            await redis.mset({"first": "1", "second": "2"})  # and one connection in the pool
            os.kill(stopped_redis.process.pid, signal.SIGSTOP)
            waiting = asyncio.ensure_future(redis.get("first"))
            await asyncio.sleep(REDIS_TIMEOUT_S / 5)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            os.kill(stopped_redis.process.pid, signal.SIGCONT)
            assert await redis.get("second") == b"2"  # its own reply, not b"1"

    asyncio.run(scenario())
