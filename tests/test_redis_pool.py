"""Stage 2+: the API's Redis pool holds a bounded number of connections. A command that finds
them all in use waits for one, up to the Redis timeout, then gets a 503 saying the server is
busy: not a connection of its own (the pool grew by one per concurrent request, without
end), and never a hang or a 500."""

import threading

import pytest
from fastapi.testclient import TestClient

import jobkit.redis_pool
from tests.helpers import enqueue, poll

pytestmark = pytest.mark.since_stage(2)

POOL_SIZE = 2  # MAX_CONNECTIONS in these tests
DEADLINE_S = 10.0


@pytest.fixture
def small_pool(stage, settings_env, monkeypatch):
    """(the app's TestClient, its Redis pool): MAX_CONNECTIONS is POOL_SIZE."""

    def start(redis_timeout_s: float) -> tuple[TestClient, object]:
        monkeypatch.setattr(jobkit.redis_pool, "MAX_CONNECTIONS", POOL_SIZE)
        monkeypatch.setenv("REDIS_TIMEOUT_S", str(redis_timeout_s))
        stage.module("config").get_settings.cache_clear()
        client = TestClient(stage.module("main").app)
        client.__enter__()
        started.append(client)
        return client, client.app.state.redis.connection_pool

    started: list[TestClient] = []
    yield start
    for client in started:
        client.__exit__(None, None, None)


def take_every_connection(client: TestClient, pool) -> list:
    """Hold all of the pool's connections, as that many slow commands would."""
    return [client.portal.call(pool.get_connection) for _ in range(POOL_SIZE)]


def test_a_full_redis_pool_is_a_503_after_a_bounded_wait_not_a_new_connection(small_pool):
    client, pool = small_pool(redis_timeout_s=0.5)
    job_id = enqueue(client, "add", {"x": 1, "y": 2})  # its status is read from Redis
    held = take_every_connection(client, pool)

    busy = client.get(f"/jobs/{job_id}")

    assert busy.status_code == 503, busy.text
    assert busy.json()["detail"].startswith("The server is busy: all 2 Redis connections")
    assert busy.headers["retry-after"] == "1"
    client.portal.call(pool.release, held.pop())
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"  # a connection was free
    client.portal.call(pool.release, held.pop())


def test_a_command_waiting_for_a_connection_gets_the_next_one_freed(small_pool):
    client, pool = small_pool(redis_timeout_s=DEADLINE_S)  # waits up to this for a connection
    job_id = enqueue(client, "add", {"x": 1, "y": 2})
    held = take_every_connection(client, pool)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(client.get(f"/jobs/{job_id}")))
    waiting.start()
    poll(lambda: pool.waiting == 1, DEADLINE_S, "the request to wait for a connection")
    client.portal.call(pool.release, held.pop())
    waiting.join(DEADLINE_S)
    client.portal.call(pool.release, held.pop())
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["status"] == "queued"
