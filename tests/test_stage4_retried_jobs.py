"""Stage 4: a job across its tries: cancelled between tries, its start time, its attempt log."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import BackgroundWorker, enqueue, job, poll
from tests.httpserver import Reply, ScriptedServer

pytestmark = pytest.mark.since_stage(4)

DEADLINE_S = 10.0
TRIALS = 3
# The test worker's poll, and so how often it checks ARQ's abort set. Long, so that between
# picking the jobs up and its next check, the DELETEs land and the tries end in a retry (all
# within a few hundred milliseconds: the steps are ordered by events, not by timing).
ABORT_CHECK_EVERY_S = 3.0


@pytest.fixture
def fetch_server(stage, settings_env, monkeypatch):
    """A scripted server that fetch may reach; retries come soon (within DELETE's wait)."""
    monkeypatch.setenv("FETCH_ALLOWLIST", '["127.0.0.1/32"]')
    monkeypatch.setenv("FETCH_BASE_DELAY_S", "0.2")
    stage.module("config").get_settings.cache_clear()  # before `client` reads the settings
    with ScriptedServer() as server:
        yield server


def test_a_cancel_that_lands_as_an_attempt_ends_in_a_retry_is_not_lost(
    fetch_server, stage, client, redis_url, raw_redis
):
    server = fetch_server
    holds = [threading.Event() for _ in range(TRIALS)]
    paths = [f"/busy-{n}" for n in range(TRIALS)]
    ids = [
        enqueue(client, "fetch", {"url": server.script(path, Reply(503, hold=hold), Reply(200))})
        for path, hold in zip(paths, holds, strict=True)
    ]
    worker = BackgroundWorker(stage, redis_url, poll_delay=ABORT_CHECK_EVERY_S)
    try:
        poll(lambda: all(server.hits[path] for path in paths), DEADLINE_S, "the requests")
        with ThreadPoolExecutor(TRIALS) as pool:
            deleting = [pool.submit(client.delete, f"/jobs/{job_id}") for job_id in ids]
            landed = lambda: all(raw_redis.zscore("arq:abort", job_id) for job_id in ids)  # noqa: E731
            poll(landed, DEADLINE_S, "the DELETEs' abort requests")
            for hold in holds:
                hold.set()  # only now do the 503s arrive: each try ends in a retry
            responses = [future.result(DEADLINE_S) for future in deleting]
    finally:
        for hold in holds:
            hold.set()
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"
    assert worker.join(DEADLINE_S).jobs_complete == 0
    for path, job_id in zip(paths, ids, strict=True):
        assert len(server.hits[path]) == 1  # it never ran again
        cancelled = job(client, job_id)
        assert (cancelled["status"], cancelled["attempts"]) == ("cancelled", 1)
        assert [a["outcome"] for a in cancelled["attempt_log"]] == ["retrying"]
    assert raw_redis.zcard("arq:abort") == raw_redis.zcard("arq:queue") == 0


def test_after_retries_start_time_is_when_the_first_try_started(fetch_server, client, drain):
    url = fetch_server.script("/flaky", Reply(503), Reply(503), Reply(200))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    done = job(client, job_id)
    assert (done["status"], done["attempts"]) == ("complete", 3)
    assert done["start_time"] == done["attempt_log"][0]["start_time"]
    assert done["start_time"] < done["attempt_log"][-1]["start_time"]


def test_a_finished_job_shows_its_final_attempt_before_the_worker_has_recorded_it(client, drain):
    job_id = enqueue(client, "divide", {"x": 1, "y": 0})
    # The moment GET must cover: the result is in Redis, the worker's attempt row is not yet
    # in the ledger (it writes it from after_job_end, and a little behind).
    drain(after_job_end=None)
    failed = job(client, job_id)
    assert failed["status"] == "failed"
    assert [(a["attempt"], a["outcome"], a["error"]) for a in failed["attempt_log"]] == [
        (1, "failed", failed["error"])
    ]
    assert failed["attempt_log"][0]["finish_time"] == failed["finish_time"]


def test_a_job_the_worker_has_not_recorded_yet_still_gets_its_start_time(client, drain, raw_redis):
    job_id = enqueue(client, "add", {"x": 1, "y": 2})
    # The worker writes its rows a little behind: here none of them has landed when GET
    # records the result from Redis. (A start row landing after that skips a finished row.)
    drain(on_job_start=None, after_job_end=None)
    done = job(client, job_id)
    assert done["status"] == "complete"
    assert done["start_time"] is not None
    raw_redis.delete(f"arq:result:{job_id}")  # from now on the ledger alone answers
    again = job(client, job_id)
    assert again["start_time"] == done["start_time"]
    assert again["enqueue_time"] <= again["start_time"] <= again["finish_time"], again


ONE_TRY_ENDINGS = {  # how a job's one try ends: the task, its arguments, the job's status
    "complete": ("add", {"x": 1, "y": 2}, "complete"),
    "failed": ("divide", {"x": 1, "y": 0}, "failed"),
    "timed out": ("wait", {"seconds": 5}, "failed"),
}


@pytest.mark.parametrize("ending", ONE_TRY_ENDINGS)
def test_a_one_try_job_shows_the_attempt_log_the_worker_recorded(
    ending, stage, client, drain, monkeypatch
):
    worker = stage.module("worker")  # first: its WorkerSettings keep the real timeouts
    monkeypatch.setattr(stage.module("tasks").WaitArgs, "TIMEOUT_S", 0.2)
    task, args, status = ONE_TRY_ENDINGS[ending]
    job_id = enqueue(client, task, args)

    # The try's start in its attempt row is the job's own start, even when the function
    # starts well after the start hook.
    async def slow_start(ctx):
        await worker.job_started(ctx)
        await asyncio.sleep(0.02)

    drain(functions=worker.task_functions(), on_job_start=slow_start)
    ledger = stage.module("ledger").Ledger(stage.module("config").get_settings().database_url)
    try:
        recorded = asyncio.run(ledger.get(job_id)).attempt_log
    finally:
        ledger.close()
    shown = job(client, job_id)
    assert (shown["status"], shown["attempts"], len(recorded)) == (status, 1, 1)
    assert shown["attempt_log"] == [attempt.model_dump(mode="json") for attempt in recorded]
    # The try's times are the job's own, though the function started after the start hook.
    assert shown["attempt_log"][0]["start_time"] == shown["start_time"]
    assert shown["attempt_log"][0]["finish_time"] == shown["finish_time"]
