"""Stage 3+: seeing the queue. `GET /queue` tells ready, scheduled and running jobs apart (ARQ's
ZCARD counts all three as one) and lists the workers alive by their own heartbeats; `/health`
says when no worker is, and stays 200 (its status is about the API). Stage 4 adds Prometheus
`/metrics` on the API and on each worker, and one trace from the request to each try.

The machinery is jobkit's (tests/jobkit/ test it in depth); these check each stage's wiring,
in process where that shows it and with real processes where a process boundary is the point.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import BackgroundWorker, enqueue, poll
from tests.processes import Processes, free_port, stage_env

pytestmark = pytest.mark.since_stage(3)

DEADLINE_S = 30.0
ADD = {"x": 1, "y": 2}


def test_the_queue_tells_ready_scheduled_and_running_apart(client, raw_redis):
    ready = enqueue(client, "add", ADD)
    later = enqueue(client, "add", ADD)
    raw_redis.zadd("arq:queue", {later: time.time() * 1000 + 600_000}, xx=True)  # deferred
    running = enqueue(client, "add", ADD)
    raw_redis.set(f"arq:in-progress:{running}", b"1")  # as a worker's claim leaves it
    queue = client.get("/queue").json()
    assert (queue["ready"], queue["scheduled"], queue["running"]) == (1, 1, 1)
    assert raw_redis.zcard("arq:queue") == 3  # what ZCARD would have said: one number
    assert queue["oldest_ready_age_s"] is not None and queue["oldest_ready_age_s"] >= 0
    assert queue["workers"] == []
    assert ready != running


def test_health_says_no_worker_is_alive_and_stays_200(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["workers"] == 0
    assert response.json()["warning"] == "no worker seen yet"


def test_a_running_worker_is_listed_by_its_heartbeat_and_gone_once_it_stops(
    stage, client, redis_url
):
    hold = enqueue(client, "wait", {"seconds": 2})
    worker = BackgroundWorker(stage, redis_url)
    queue = poll(
        lambda: (q := client.get("/queue").json())["workers"] and q["running"] == 1 and q,
        DEADLINE_S,
        "the worker to show in GET /queue",
    )
    (beat,) = queue["workers"]
    assert beat["last_seen_s"] >= 0 and beat["id"]
    assert client.get("/health").json()["workers"] == 1
    worker.join(DEADLINE_S)
    after = client.get("/health").json()
    assert after["workers"] == 0
    assert after["warning"].startswith("no worker seen for")
    assert client.get(f"/jobs/{hold}").json()["status"] == "complete"


@pytest.mark.since_stage(4)
@pytest.mark.e2e
def test_stage4_metrics_and_one_trace_across_the_api_and_a_worker_process(
    stage, redis_url, tmp_path
):
    spans = tmp_path / "spans.jsonl"
    env = stage_env(redis_url, tmp_path / "data", TRACING=f"file:{spans}", WORKER_METRICS_PORT="0")
    port = free_port()
    with Processes(tmp_path / "logs") as procs:
        api_process = procs.api(stage, port, env)
        worker_process = procs.worker(stage, env)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        job_id = api.post("/tasks/divide", json={"x": 1, "y": 0}).json()["job_id"]
        poll(lambda: api.get(f"/jobs/{job_id}").json()["status"] == "failed", DEADLINE_S, "it")
        (beat,) = api.get("/queue").json()["workers"]
        worker_metrics = httpx.get(beat["extra"]["metrics"], timeout=10).text
        api_metrics = api.get("/metrics").text
        api.close()
        worker_process.terminate()  # an orderly stop: each process exports what it holds
        api_process.terminate()
    finished = samples(worker_metrics, "jobs_finished_total")
    assert finished[(("function", "divide"), ("outcome", "failed"))] == 1
    assert not any("job_id" in dict(labels) for labels in finished)
    queue = samples(api_metrics, "queue_jobs")
    assert {dict(labels)["state"] for labels in queue} == {"ready", "scheduled", "running"}
    assert any(name.startswith("http_server") for name in metric_names(api_metrics))
    traced = poll(lambda: spans_of(spans, job_id), DEADLINE_S, "the spans to be written")
    assert {span["kind"] for span in traced} >= {"SpanKind.PRODUCER", "SpanKind.CONSUMER"}
    assert len({span["context"]["trace_id"] for span in traced}) == 1  # one trace, 2 processes


def samples(text: str, name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def metric_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def spans_of(path, job_id: str) -> list[dict]:
    """The spans the file exporter wrote about the job (it writes one JSON object a line)."""
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    mine = [s for s in found if s.get("attributes", {}).get("messaging.message.id") == job_id]
    return mine if len(mine) >= 2 else []


def test_a_read_of_the_queue_does_not_grow_with_it(client, raw_redis):
    # 5,000 jobs queued behind the API's back: the read stays one round trip (its cost is
    # measured by devkit.bench_queue; here only that it answers and counts right).
    raw_redis.zadd("arq:queue", {f"j{n}": 1 if n % 2 else time.time() * 1000 + 600_000
                                 for n in range(5000)})  # fmt: skip
    queue = client.get("/queue").json()
    assert (queue["ready"], queue["scheduled"]) == (2500, 2500)
