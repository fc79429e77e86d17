"""Stage 3+ against a real uvicorn: an event loop that keeps answering while the database
makes requests wait. (The jobs page, in a real browser: tests/test_jobs_page.py.)"""

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.processes import Proc, Processes, free_port, stage_env

pytestmark = [pytest.mark.since_stage(3), pytest.mark.e2e]

START_DEADLINE_S = 30.0
# Virtual time: Chromium runs the page's timers as fast as it can, but holds the clock while
# a request is open, so the page's event streams keep the dump back until they end. The
# budget only has to outlast the worker running the job.
PAGE_BUDGET_MS = 600_000
LOCK_HELD_S = 2.5  # how long the test holds the SQLite write lock (busy_timeout is 5 s)
# An idle loop answers /ping in a millisecond; a loop blocked by the waiting POSTs would
# answer only when the lock is released, LOCK_HELD_S later. Half of that is generous
# enough for a laptop with both cores busy.
PING_LIMIT_S = LOCK_HELD_S / 2


@contextlib.contextmanager
def running_api(stage, redis_url: str, tmp_path) -> Iterator[tuple[str, Proc]]:
    """The stage's API as a uvicorn process on a free port: (url, the process)."""
    port = free_port()
    with Processes(tmp_path / "logs") as procs:
        api = procs.api(stage, port, stage_env(redis_url, tmp_path / "data"))
        yield f"http://127.0.0.1:{port}", api


def test_requests_waiting_for_the_database_do_not_block_the_event_loop(
    stage, settings_env, redis_url, tmp_path
):
    with running_api(stage, redis_url, tmp_path) as (url, _):
        # Hold the ledger's write lock, as a long transaction in another process would.
        lock = sqlite3.connect(tmp_path / "data" / "jobs.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        posts: list[int] = []
        submitters = [
            threading.Thread(
                target=lambda: posts.append(
                    httpx.post(f"{url}/tasks/add", json={"x": 1, "y": 2}, timeout=10).status_code
                )
            )
            for _ in range(5)
        ]
        for submitter in submitters:
            submitter.start()
        released_at, slowest = time.monotonic() + LOCK_HELD_S, 0.0
        try:
            while time.monotonic() < released_at:
                started = time.monotonic()
                assert httpx.get(f"{url}/ping", timeout=5).status_code == 200
                slowest = max(slowest, time.monotonic() - started)
            waiting = sum(submitter.is_alive() for submitter in submitters)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
            for submitter in submitters:
                submitter.join()

    assert waiting == 5  # every POST was still waiting for the database ...
    assert slowest < PING_LIMIT_S  # ... while the event loop kept answering
    assert posts == [202] * 5
