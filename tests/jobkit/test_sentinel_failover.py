"""jobkit.redis_pool against a real Valkey primary, replica and three sentinels
(devkit/topology.py): the pool follows a failover, even to a primary that moved while its
connections stayed open; and a worker (on jobkit's pool for ARQ) leaves when the primary
moves, even while one sentinel is stuck."""

import asyncio
import pickle
import random
import signal
import socket
import threading
import time

import pytest
import redis
from arq.connections import ArqRedis
from redis.asyncio import Redis

from devkit.topology import PRIMARY_NAME, SENTINEL_PORT, VALKEY_PORT, ReplicatedValkey, loopback
from jobkit.redis_pool import arq_pool, leave_when_primary_moves, open_pool

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.0
FOLLOW_S = 5.0  # PRIMARY_CHECK_S is 1 s; generous on a busy machine
WRITES = 20
STOPPED_S = 15.0  # one sentinel paused: each question to it costs its deadline


def free_network() -> int:
    """A 127.N network whose five addresses' ports are free now: not another run's."""
    for network in random.sample(range(130, 250), 20):
        ports = [(1, VALKEY_PORT), (2, VALKEY_PORT)] + [(n, SENTINEL_PORT) for n in (3, 4, 5)]
        try:
            for host, port in ports:
                socket.create_server((loopback(network, host), port)).close()
        except OSError:
            continue
        return network
    raise RuntimeError("no free 127.N network")


@pytest.fixture
def topology(tmp_path):
    with ReplicatedValkey(tmp_path / "redis", network=free_network()) as nodes:
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


def test_a_worker_on_jobkits_pool_stops_itself_when_the_primary_moves(topology, sigterm):
    old = topology.current_primary()

    async def main() -> None:
        arq_redis = await worker_redis(topology.url)  # connected: it knows the primary
        try:
            watch = leave_when_primary_moves(arq_redis)
            assert watch is not None
            await asyncio.sleep(0)
            assert not sigterm.is_set()
            topology.failover()
            await asyncio.to_thread(topology.wait_for_new_primary, (old.host, old.port), 20)
            await asyncio.wait_for(watch, FOLLOW_S)  # it ends once it has signalled
            assert role(old) == "master", "no window to test: the old primary turned at once"
        finally:
            await close(arq_redis)

    asyncio.run(main())
    assert sigterm.wait(1)


async def worker_redis(url: str) -> ArqRedis:
    """The stage workers' Redis: jobkit's pool, which ARQ's Worker takes as its own."""
    redis = arq_pool(url, "arq:queue", pickle.dumps, pickle.loads)
    assert redis is not None
    await redis.ping()
    return redis


async def close(redis: ArqRedis) -> None:
    for client in redis.connection_pool.sentinel_manager.sentinels:
        await client.aclose()
    await redis.aclose()


def test_a_worker_leaves_after_a_failover_while_one_sentinel_is_stuck(topology, sigterm):
    """One sentinel of three SIGSTOPped (connected, silent): the others still fail the primary
    over, and a worker still notices and leaves, and a worker starting then still connects."""
    old = topology.current_primary()
    stuck, awake = topology.sentinels[0], topology.sentinels[1]

    async def main() -> None:
        arq_redis = await worker_redis(topology.url)
        stuck.process.send_signal(signal.SIGSTOP)
        watch = None
        try:
            await arq_redis.ping()
            watch = leave_when_primary_moves(arq_redis)
            assert watch is not None
            with topology.ask(awake) as client:
                client.execute_command("SENTINEL", "FAILOVER", PRIMARY_NAME)
            await asyncio.wait_for(asyncio.shield(watch), STOPPED_S)
            assert sigterm.is_set()
            started = time.monotonic()
            restarted = await asyncio.wait_for(worker_redis(topology.url), STOPPED_S)
            assert time.monotonic() - started < STOPPED_S
            await close(restarted)
        finally:
            stuck.process.send_signal(signal.SIGCONT)
            if watch is not None:
                watch.cancel()
            await close(arq_redis)

    asyncio.run(main())
    with topology.ask(awake) as client:
        assert client.sentinel_get_master_addr_by_name(PRIMARY_NAME) != (old.host, str(old.port))
