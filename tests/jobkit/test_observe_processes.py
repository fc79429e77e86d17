"""jobkit.observe across real processes (devkit/observed_app.py run by uvicorn and arq): what
only processes show. A SIGKILLed worker leaves the worker list within its heartbeat's TTL;
one trace, and JSON log lines that name the job, follow a job from the HTTP request in the
API process to each try in the worker process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis.asyncio import Redis

from devkit import harness
from jobkit.heartbeat import live_workers
from tests.helpers import poll
from tests.processes import Proc, Processes, free_port, stage_env

pytestmark = pytest.mark.e2e
APP = "devkit.observed_app"
QUEUE = "arq:queue"
DEADLINE_S = 30.0
TTL_S = 2.0


def start_api(procs: Processes, env: dict[str, str]) -> tuple[str, Proc]:
    port = free_port()
    proc = procs.start("api", harness.api_command(APP, port), env)
    url = f"http://{harness.HOST}:{port}"
    harness.wait_until(lambda: harness.api_answers(url), f"the API on {url}", [proc])
    return url, proc


def start_worker(procs: Processes, env: dict[str, str]) -> Proc:
    proc = procs.start("worker", harness.worker_command(APP), env)
    harness.wait_until(lambda: harness.worker_polls(proc), "the worker to poll", [proc])
    return proc


def alive(redis_url: str) -> set[str]:
    async def read() -> set[str]:
        client = Redis.from_url(redis_url)
        try:
            return {beat.id for beat in (await live_workers(client, QUEUE)).alive}
        finally:
            await client.aclose()

    return asyncio.run(read())


def test_a_sigkilled_worker_drops_out_within_its_ttl_and_a_stopped_one_at_once(redis_url, tmp_path):
    env = stage_env(redis_url, tmp_path / "data", HEARTBEAT_INTERVAL_S="0.2",
                    HEARTBEAT_TTL_S=str(TTL_S))  # fmt: skip
    raw = redis.Redis.from_url(redis_url)
    with Processes(tmp_path / "logs") as procs:
        doomed = start_worker(procs, env | {"WORKER_ID": "doomed"})
        stopped = start_worker(procs, env | {"WORKER_ID": "stopped"})
        poll(lambda: alive(redis_url) == {"doomed", "stopped"}, DEADLINE_S, "both workers")
        doomed.kill_all()  # SIGKILL: no on_shutdown, its key is left behind
        left = raw.pttl(f"jobkit:worker:{QUEUE}:doomed")
        assert 0 < left <= TTL_S * 1000  # it expires within the TTL from its last beat
        poll(lambda: alive(redis_url) == {"stopped"}, DEADLINE_S, "the killed worker to drop out")
        assert stopped.terminate() == 0
        assert alive(redis_url) == set()  # a clean shutdown removes its own key at once
    raw.close()


@pytest.fixture(scope="module")
def observed_run(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One API and one worker with tracing (to files) and JSON logs on; a job that retries
    once, and one that fails as expected (a 404). Returns what they wrote."""
    tmp = tmp_path_factory.mktemp("observed")
    redis.Redis.from_url(redis_server).flushdb()
    common = {"JSON_LOGS": "1", "HEARTBEAT_INTERVAL_S": "0.2"}
    env = stage_env(redis_server, tmp / "data", **common)
    api_env = env | {"TRACING": f"file:{tmp / 'api-spans.jsonl'}", "TRACING_SERVICE": "api"}
    worker_env = env | {"TRACING": f"file:{tmp / 'worker-spans.jsonl'}", "WORKER_ID": "w1"}
    ids = {}
    with Processes(tmp / "logs") as procs:
        url, api = start_api(procs, api_env)
        worker = start_worker(procs, worker_env)
        for name, body in [("flaky", {"fail_tries": 1}), ("gone", {})]:
            response = httpx.post(f"{url}/tasks/{name}", json=body)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["job_id"]
        for name, status in [("flaky", "complete"), ("gone", "failed")]:
            poll(lambda n=name, s=status: httpx.get(f"{url}/jobs/{ids[n]}").json()["status"] == s,
                 DEADLINE_S, f"{name} to end {status}")  # fmt: skip
        assert worker.terminate() == 0  # on_shutdown exports the spans still buffered
        api.terminate()  # the lifespan's exit exports them too (uvicorn re-raises SIGTERM)
    return {
        "ids": ids,
        "spans": [*read_lines(tmp / "api-spans.jsonl"), *read_lines(tmp / "worker-spans.jsonl")],
        "api": json_lines(tmp / "logs" / "api.log"),
        "worker": json_lines(tmp / "logs" / "worker.log"),
    }


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a process's output (anything else it printed is left out)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_one_trace_runs_from_the_request_through_the_enqueue_to_each_try(observed_run):
    job_id = observed_run["ids"]["flaky"]
    spans = observed_run["spans"]
    (send,) = [s for s in spans if s["attributes"].get("messaging.message.id") == job_id
               and s["kind"] == "SpanKind.PRODUCER"]  # fmt: skip
    (request,) = [s for s in spans if s["context"]["span_id"] == send["parent_id"]]
    tries = sorted(
        (s for s in spans if s["kind"] == "SpanKind.CONSUMER"
         and s["attributes"]["messaging.message.id"] == job_id),
        key=lambda s: s["attributes"]["arq.job.try"],
    )  # fmt: skip
    assert request["kind"] == "SpanKind.SERVER" and request["name"] == "POST /tasks/{name}"
    assert request["resource"]["attributes"]["service.name"] == "api"
    assert send["name"] == f"send {QUEUE}"
    assert send["attributes"] | {"arq.job.function": "flaky"} == send["attributes"]
    assert [t["attributes"]["arq.job.try"] for t in tries] == [1, 2]
    assert [t["attributes"]["arq.job.outcome"] for t in tries] == ["retried", "complete"]
    trace_id = request["context"]["trace_id"]
    for span in [send, *tries]:
        assert span["context"]["trace_id"] == trace_id
    for attempt in tries:  # each try is a child of the enqueue, in the worker's process
        assert attempt["parent_id"] == send["context"]["span_id"]
        assert attempt["name"] == f"process {QUEUE}"
        assert attempt["resource"]["attributes"]["service.name"] == "worker"
        assert attempt["attributes"]["messaging.system"] == "arq"
        assert attempt["attributes"]["messaging.destination.name"] == QUEUE
        assert attempt["attributes"]["messaging.operation.type"] == "process"


def test_every_log_line_a_job_causes_names_it_in_the_api_and_in_the_worker(observed_run):
    job_id = observed_run["ids"]["flaky"]
    spans = observed_run["spans"]
    trace_id = next(s["context"]["trace_id"] for s in spans
                    if s["attributes"].get("messaging.message.id") == job_id)  # fmt: skip
    trace_id = trace_id.removeprefix("0x")  # the span files say 0x..., logs say the hex
    api = [line for line in observed_run["api"] if line.get("job_id") == job_id]
    assert [line["message"] for line in api] == ["enqueued flaky"]
    assert api[0]["function"] == "flaky" and api[0]["trace_id"] == trace_id
    worker = [line for line in observed_run["worker"] if line.get("job_id") == job_id]
    # ARQ's own lines: start, retry, start again, result
    assert [line["logger"] for line in worker] == ["arq.worker"] * 4
    assert [line["try"] for line in worker] == [1, 1, 2, 2]
    for line in worker:
        assert (line["function"], line["worker"], line["trace_id"]) == ("flaky", "w1", trace_id)
    shutdown = observed_run["worker"][-1]  # a line about no job names none
    assert "shutdown" in shutdown["message"] and "job_id" not in shutdown


def test_an_expected_failure_is_one_warning_line_without_a_traceback(observed_run):
    job_id = observed_run["ids"]["gone"]
    (failed,) = [line for line in observed_run["worker"]
                 if line.get("job_id") == job_id and " failed, " in line["message"]]  # fmt: skip
    assert failed["level"] == "WARNING"
    assert "NotThere: HTTP 404" in failed["message"]
    assert "exception" not in failed
