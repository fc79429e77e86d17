"""jobkit.redis_pool against a real Valkey primary, replica and three sentinels
(devkit/topology.py): the pool follows a failover, even to a primary that moved while its
connections stayed open; and a worker on ARQ's own pool leaves when the primary moves."""

import asyncio
import signal
import threading

import pytest
import redis
from arq.connections import create_pool
from redis.asyncio import Redis

from devkit.topology import ReplicatedValkey
from jobkit.redis_pool import arq_settings, leave_when_primary_moves, open_pool

pytestmark = pytest.mark.e2e

NETWORK = 124  # 127.124.0.x: this test's own addresses
TIMEOUT_S = 1.0
FOLLOW_S = 5.0  # PRIMARY_CHECK_S is 1 s; generous on a busy machine
WRITES = 20


@pytest.fixture
def topology(tmp_path):
    with ReplicatedValkey(tmp_path / "redis", network=NETWORK) as nodes:
        yield nodes


def role(server) -> str:
    with redis.Redis(server.host, server.port, decode_responses=True) as client:
        return client.info("replication")["role"]


def keys(server, pattern: str) -> set[str]:
    with redis.Redis(server.host, server.port, decode_responses=True) as client:
        return set(client.keys(pattern))


def test_after_a_planned_failover_every_write_goes_to_the_new_primary(topology):
    old = topology.current_primary()

    async def main() -> None:
        pool = open_pool(topology.url, timeout_s=TIMEOUT_S)
        client = Redis(connection_pool=pool)
        try:
            # Connections open to the old primary, as an API's pool has them under load.
            await asyncio.gather(*(client.set(f"before:{i}", i) for i in range(WRITES)))
            topology.failover()
            await asyncio.to_thread(topology.wait_for_new_primary, (old.host, old.port), 20)
            new = topology.current_primary()
            # The sentinels turn the old primary into a replica only seconds later: until
            # then it still takes writes, and drops them when it turns.
            assert role(old) == "master", "no window to test: the old primary turned at once"
            deadline = asyncio.get_running_loop().time() + FOLLOW_S
            n = 0
            while f"probe:{n}" not in keys(new, "probe:*"):
                assert asyncio.get_running_loop().time() < deadline, "the pool never followed"
                n += 1
                await client.set(f"probe:{n}", n)
                await asyncio.sleep(0.05)
            await asyncio.gather(*(client.set(f"after:{i}", i) for i in range(WRITES)))
            assert keys(new, "after:*") == {f"after:{i}" for i in range(WRITES)}
            assert keys(old, "after:*") == set()
        finally:
            await client.aclose()
            await pool.aclose()

    asyncio.run(main())


@pytest.fixture
def sigterm():
    """SIGTERM to this process sets the event instead of ending the tests."""
    received = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: received.set())
    yield received
    signal.signal(signal.SIGTERM, previous)


def test_a_worker_on_arqs_pool_stops_itself_when_the_primary_moves(topology, sigterm):
    old = topology.current_primary()

    async def main() -> None:
        arq_redis = await create_pool(arq_settings(topology.url))
        try:
            await arq_redis.ping()  # connected: the pool knows where the primary is
            watch = leave_when_primary_moves(arq_redis)
            assert watch is not None
            await asyncio.sleep(0)
            assert not sigterm.is_set()
            topology.failover()
            await asyncio.to_thread(topology.wait_for_new_primary, (old.host, old.port), 20)
            await asyncio.wait_for(watch, FOLLOW_S)  # it ends once it has signalled
            assert role(old) == "master", "no window to test: the old primary turned at once"
        finally:
            for client in arq_redis.connection_pool.sentinel_manager.sentinels:
                await client.aclose()
            await arq_redis.aclose()

    asyncio.run(main())
    assert sigterm.wait(1)
