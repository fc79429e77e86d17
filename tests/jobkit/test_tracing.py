"""jobkit.tracing in one process: the carrier, the job payload that carries it, the CONSUMER
span of each pick-up and its error status, the exporters (an in-test OTLP/HTTP receiver among
them), and that off means nothing at all. (Across processes: test_observe_processes.py.)"""

import asyncio
import json
import pickle
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from jobkit import observe
from jobkit.tracing import Tracing, extract, inject
from jobkit.worker_events import CARRIER_KEY
from tests.jobkit.arq_helpers import drain, pool

QUEUE = "arq:queue"
JOB = {"t": None, "f": "add", "a": [], "k": {"x": 1}, "et": 1}


def spans_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_carrier_holds_the_current_trace_context_and_gives_it_back(tmp_path):
    tracing = Tracing(f"file:{tmp_path / 'spans.jsonl'}", "api")
    assert inject() == {}  # no span, nothing to carry
    with tracing.sending(QUEUE, "job-1", "add") as carrier:
        current = trace.get_current_span().get_span_context()
    tracing.shutdown()
    assert set(carrier) == {"traceparent"}
    carried = trace.get_current_span(extract(carrier)).get_span_context()
    assert (carried.trace_id, carried.span_id) == (current.trace_id, current.span_id)
    (send,) = spans_in(tmp_path / "spans.jsonl")
    assert send["kind"] == "SpanKind.PRODUCER" and send["name"] == f"send {QUEUE}"
    assert send["attributes"]["messaging.message.id"] == "job-1"
    assert send["attributes"]["messaging.operation.type"] == "send"


def test_the_serializer_puts_the_context_in_a_jobs_payload_and_not_in_a_result(tmp_path):
    tracing = Tracing(f"file:{tmp_path / 'spans.jsonl'}", "api")
    serialize = tracing.serializer(json.dumps)
    with tracing.sending(QUEUE, "job-1", "add") as carrier:
        job = json.loads(serialize(JOB))
        result = json.loads(serialize({**JOB, "s": True, "r": 2}))
    outside = json.loads(serialize(JOB))
    tracing.shutdown()
    assert job == {**JOB, CARRIER_KEY: carrier}
    assert CARRIER_KEY not in result and CARRIER_KEY not in outside


def test_off_tracing_changes_nothing_and_makes_no_span():
    tracing = Tracing("", "api")
    assert not tracing.enabled
    assert tracing.serializer(json.dumps) is json.dumps  # the app's own, not a wrapper
    with tracing.sending(QUEUE, "job-1", "add") as carrier:
        assert not trace.get_current_span().get_span_context().is_valid
    assert carrier == {}
    tracing.shutdown()


def test_an_unknown_tracing_setting_is_refused_when_the_process_starts():
    with pytest.raises(ValueError, match="file:<path>"):
        Tracing("jaeger", "api")


def test_the_console_exporter_prints_each_span_as_json(capsys):
    tracing = Tracing("console", "api")
    with tracing.sending(QUEUE, "job-1", "add"):
        pass
    tracing.shutdown()
    assert json.loads(capsys.readouterr().out)["name"] == f"send {QUEUE}"


def test_the_otlp_exporter_sends_spans_to_an_otlp_http_receiver(monkeypatch):
    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    try:
        tracing = Tracing("otlp", "api")
        with tracing.sending(QUEUE, "job-1", "add"):
            pass
        tracing.shutdown()  # exports what is buffered
    finally:
        server.shutdown()
        server.server_close()
    request = ExportTraceServiceRequest.FromString(received[0])
    (span,) = request.resource_spans[0].scope_spans[0].spans
    assert span.name == f"send {QUEUE}"
    assert span.kind == span.SPAN_KIND_PRODUCER


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


async def divide(ctx: dict[str, Any], x: float, y: float) -> float:
    return x / y


async def flaky(ctx: dict[str, Any]) -> None:
    if ctx["job_try"] == 1:
        raise Retry(defer=0)


def test_each_pickup_is_a_consumer_span_under_the_enqueue_and_a_failure_is_an_error(
    redis_url, tmp_path
):
    api_spans, worker_spans = tmp_path / "api.jsonl", tmp_path / "worker.jsonl"
    tracing = Tracing(f"file:{api_spans}", "api")

    async def startup(ctx: dict[str, Any]) -> None:
        await observe.start_worker(ctx, QUEUE, tracing=f"file:{worker_spans}")

    async def main() -> None:
        async with pool(redis_url) as redis:
            redis.job_serializer = tracing.serializer(pickle.dumps)
            for job_id, function, args in [("j-div", "divide", (1, 0)), ("j-flaky", "flaky", ())]:
                with tracing.sending(QUEUE, job_id, function):
                    await redis.enqueue_job(function, *args, _job_id=job_id)
            await redis.enqueue_job("add", 1, 1, _job_id="j-untraced")  # enqueued untraced
        await drain(redis_url, [add, divide, flaky], on_startup=startup,
                    on_shutdown=observe.stop_worker)  # fmt: skip

    asyncio.run(main())
    tracing.shutdown()
    sends = {s["attributes"]["messaging.message.id"]: s for s in spans_in(api_spans)}
    tries = spans_in(worker_spans)
    by_job: dict[str, list[dict[str, Any]]] = {}
    for span in tries:
        by_job.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    (failed,) = by_job["j-div"]
    assert failed["parent_id"] == sends["j-div"]["context"]["span_id"]
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["attributes"]["error.type"] == "ZeroDivisionError"
    assert failed["attributes"]["arq.job.outcome"] == "failed"
    retried = sorted(by_job["j-flaky"], key=lambda s: s["attributes"]["arq.job.try"])
    assert [s["attributes"]["arq.job.outcome"] for s in retried] == ["retried", "complete"]
    assert all(s["status"]["status_code"] == "UNSET" for s in retried)
    assert {s["context"]["trace_id"] for s in retried} == {sends["j-flaky"]["context"]["trace_id"]}
    (untraced,) = by_job["j-untraced"]
    assert untraced["parent_id"] is None  # a trace of its own, not someone else's
