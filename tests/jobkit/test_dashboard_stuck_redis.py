"""jobkit.dashboard's shared reads (GET /stats, GET /cron) when Redis is stuck (a Valkey of
the test's own, SIGSTOPped: connected, but silent): one read per key however many pages ask,
a slow key never holds up another, and a failed read is not tried again at once."""

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

import jobkit.dashboard
from devkit.valkey import EmbeddedValkey
from jobkit.dashboard import Feed
from jobkit.redis_pool import open_pool
from jobkit.streams import Streams

pytestmark = pytest.mark.e2e  # a Valkey of its own, to stop

REDIS_TIMEOUT_S = 1.0
SLACK_S = 1.5  # what a busy 2-core machine may add to a timeout


@pytest.fixture
def valkey(tmp_path):
    server = EmbeddedValkey(tmp_path / "valkey", persist=False)
    server.start()
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


async def no_page(also: Sequence[str]) -> tuple[None, set[str]]:
    raise AssertionError("not read in this test")


def test_a_stuck_redis_costs_one_read_per_key_and_holds_up_no_other_key(valkey, monkeypatch):
    monkeypatch.setattr(jobkit.dashboard, "SHARED_FAILED_FOR_S", 0.5)
    reads: Counter[str] = Counter()

    async def scenario() -> None:
        pool = open_pool(valkey.url, timeout_s=REDIS_TIMEOUT_S)
        redis = Redis(connection_pool=pool)
        await redis.set("cron", "ran")

        async def cron() -> str:
            reads["cron"] += 1
            return (await redis.get("cron")).decode()

        async def stats() -> str:  # the ledger's: no Redis in it
            reads["stats"] += 1
            return "chart"

        async def timed(key: str, read) -> tuple[object, float]:
            started = time.monotonic()
            try:
                return await feed.shared(key, read), time.monotonic() - started
            except Exception as exc:
                return exc, time.monotonic() - started

        feed = Feed(Streams(), no_page)
        os.kill(valkey.process.pid, signal.SIGSTOP)
        *crons, chart = await asyncio.gather(
            *(timed("cron", cron) for _ in range(4)), timed("stats", stats)
        )
        assert chart == ("chart", pytest.approx(0, abs=REDIS_TIMEOUT_S / 2))  # not behind cron
        for answer, took in crons:  # all four in one timeout, not one after the other
            assert isinstance(answer, Exception)
            assert took < REDIS_TIMEOUT_S + SLACK_S
        assert reads == {"cron": 1, "stats": 1}

        again, took = await timed("cron", cron)  # the failure is kept a while: no new wait
        assert isinstance(again, Exception) and took < REDIS_TIMEOUT_S / 2
        assert reads["cron"] == 1

        os.kill(valkey.process.pid, signal.SIGCONT)
        await asyncio.sleep(jobkit.dashboard.SHARED_FAILED_FOR_S + 0.1)
        assert await feed.shared("cron", cron) == "ran"  # read again once it has passed
        assert reads["cron"] == 2
        await redis.aclose()
        await pool.aclose()

    asyncio.run(scenario())
