"""jobkit.metrics and jobkit.worker_metrics: the numbers Prometheus would scrape from the API
and from a worker's own port move as jobs are queued, deferred, run, fail and retry. Real ARQ
workers, the test Valkey, scrapes parsed with prometheus_client's parser."""

import asyncio
import socket
from typing import Any

import httpx
from arq import Retry
from arq.worker import Worker, func
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from jobkit import observe
from jobkit.heartbeat import live_workers
from jobkit.metrics import ApiMetrics
from tests.jobkit.apps import QUEUE, make_app
from tests.jobkit.arq_helpers import drain, pool, until, worker
from tests.jobkit.scrape import Scrape

DEADLINE_S = 30.0
FINISHED = "jobs_finished_total"


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    return x / y


async def flaky(ctx: dict[str, Any]) -> int:
    if ctx["job_try"] == 1:
        raise Retry(defer=0)
    return ctx["job_try"]


async def always_retry(ctx: dict[str, Any]) -> None:
    raise Retry(defer=0)


async def slow(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(60)


async def start_observing(ctx: dict[str, Any]) -> None:
    await observe.start_worker(ctx, QUEUE, metrics_port=0, heartbeat_interval_s=0.05)


async def worker_metrics_url(redis: Any) -> str:
    (beat,) = (await live_workers(redis, QUEUE)).alive
    return str(beat.extra["metrics"])


async def scrape(url: str) -> Scrape:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200
    return Scrape(response.text)


def test_the_api_and_worker_metrics_move_as_jobs_are_queued_deferred_run_fail_and_retry(
    redis_url,
):
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        holding.set()
        await release.wait()

    functions = [add, divide, flaky, func(hold, name="hold")]
    seen: dict[str, Scrape] = {}

    with TestClient(make_app(redis_url, metrics=True)) as client:

        def api(name: str) -> Scrape:
            response = client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            seen[name] = Scrape(response.text)
            return seen[name]

        def post(task: str, **body: Any) -> None:
            assert client.post(f"/tasks/{task}", json=body).status_code == 202

        post("add", x=1, y=2)
        post("add", x=1, y=2, defer_s=3600)
        api("queued")

        async def main() -> None:
            busy = worker(redis_url, functions, burst=False, on_startup=start_observing,
                          on_shutdown=observe.stop_worker)  # fmt: skip
            run = asyncio.create_task(busy.async_run())
            await asyncio.to_thread(post, "hold")
            await asyncio.wait_for(holding.wait(), DEADLINE_S)
            async with pool(redis_url) as redis:
                url = await worker_metrics_url(redis)
                seen["worker holding"] = await scrape(url)
                await asyncio.to_thread(api, "holding")
                release.set()
                await asyncio.to_thread(post, "divide", x=1, y=0)
                await asyncio.to_thread(post, "flaky")

                async def all_ended() -> Scrape | None:
                    now = await scrape(url)
                    return now if now.total(FINISHED) == 4 else None

                seen["worker done"] = await until(all_ended, DEADLINE_S, "the jobs to end")
                await asyncio.to_thread(api, "done")
                await busy.close()
                await asyncio.gather(run, return_exceptions=True)
                await asyncio.to_thread(api, "worker gone")

        asyncio.run(main())

    queued = seen["queued"]
    for state, count in [("ready", 1), ("scheduled", 1), ("running", 0)]:
        assert queued.value("queue_jobs", queue=QUEUE, state=state) == count
    assert queued.value("workers_alive", queue=QUEUE) == 0
    assert queued.value("queue_oldest_ready_age_seconds", queue=QUEUE) >= 0
    # FastAPI's own HTTP metrics, bridged into the same scrape; /metrics itself not measured
    posts = {"http_route": "/tasks/{name}", "http_request_method": "POST"}
    assert queued.value("http_server_request_duration_seconds_count", **posts) == 2
    last = seen["worker gone"]  # after four scrapes of /metrics
    assert last.total("http_server_request_duration_seconds_count", http_route="/metrics") == 0

    holding = seen["holding"]
    assert holding.value("queue_jobs", queue=QUEUE, state="running") == 1
    assert holding.value("queue_jobs", queue=QUEUE, state="scheduled") == 1
    assert holding.value("workers_alive", queue=QUEUE) == 1
    assert seen["worker holding"].value("jobs_in_progress") == 1

    done = seen["worker done"]
    assert done.value(FINISHED, function="add", outcome="complete") == 1
    assert done.value(FINISHED, function="hold", outcome="complete") == 1
    assert done.value(FINISHED, function="divide", outcome="failed") == 1
    assert done.value(FINISHED, function="flaky", outcome="complete") == 1
    assert done.value("jobs_retried_total", function="flaky") == 1
    assert done.value("jobs_started_total", function="flaky") == 2
    assert done.value("jobs_in_progress") == 0
    assert done.value("job_duration_seconds_count", function="flaky", outcome="retried") == 1
    assert done.value("job_queue_wait_seconds_count", function="flaky") == 2
    assert done.total("job_duration_seconds_count") == 5  # every try that ran
    assert seen["done"].value("queue_jobs", queue=QUEUE, state="scheduled") == 1  # deferred
    assert seen["done"].value("queue_jobs", queue=QUEUE, state="ready") == 0
    assert seen["worker gone"].value("workers_alive", queue=QUEUE) == 0


def test_endings_without_a_try_are_counted_and_no_label_holds_a_job_id(redis_url):
    async def main() -> tuple[Scrape, list[str]]:
        async with pool(redis_url) as redis:
            ids = [
                (await redis.enqueue_job(*job)).job_id  # type: ignore[union-attr]
                for job in [("always_retry",), ("slow",), ("no_such_function",)]
            ]
            metrics: dict[str, Scrape] = {}

            async def scrape_before_stopping(ctx: dict[str, Any]) -> None:
                metrics["last"] = await scrape(await worker_metrics_url(ctx["redis"]))
                await observe.stop_worker(ctx)

            functions = [func(always_retry, max_tries=2), func(slow, timeout=0.2)]
            await drain(redis_url, functions, on_startup=start_observing,
                        on_shutdown=scrape_before_stopping)  # fmt: skip
            return metrics["last"], ids

    last, ids = asyncio.run(main())
    assert last.value(FINISHED, function="always_retry", outcome="failed") == 1
    assert last.value("jobs_retried_total", function="always_retry") == 2
    assert last.value("jobs_started_total", function="always_retry") == 2  # not the 3rd pick-up
    assert last.value(FINISHED, function="slow", outcome="timeout") == 1
    assert last.value(FINISHED, function="<unknown>", outcome="failed") == 1  # not its name
    values = {
        value for labels in map(dict, (s.labels for s in last.samples)) for value in labels.values()
    }
    assert not values & set(ids)


def test_without_a_metrics_port_a_worker_serves_nothing_and_says_so(redis_url):
    async def main() -> Worker:
        async def startup(ctx: dict[str, Any]) -> None:
            await observe.start_worker(ctx, QUEUE)  # metrics_port=None: off

        async def check(ctx: dict[str, Any]) -> None:
            (beat,) = (await live_workers(ctx["redis"], QUEUE)).alive
            assert beat.extra == {}
            await observe.stop_worker(ctx)

        return await drain(redis_url, [add], on_startup=startup, on_shutdown=check)

    assert asyncio.run(main()).jobs_complete == 0


def test_with_metrics_off_the_api_has_no_metrics_route(redis_url):
    with TestClient(make_app(redis_url, metrics=False)) as client:
        assert client.get("/metrics").status_code == 404
        assert client.post("/tasks/add", json={"x": 1, "y": 1}).status_code == 202


def test_a_scrape_while_redis_is_away_answers_without_the_queue_gauges(caplog):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"  # bound, never listening

    async def main() -> bytes:
        client = Redis.from_url(url, socket_connect_timeout=1)
        try:
            return await ApiMetrics(QUEUE).render(client)
        finally:
            await client.aclose()

    scrape = Scrape(asyncio.run(main()).decode())
    assert scrape.labels("queue_jobs") == [] and scrape.labels("workers_alive") == []
    assert "queue not read" in caplog.text
