"""Seeing the queue, wired in a few lines: what a stage calls from its worker and its API.

In the worker (worker.py), from ARQ's start-up and shutdown hooks:

    await observe.start_worker(ctx, settings.queue_name, metrics_port=..., tracing=...)
    await observe.stop_worker(ctx)

It starts the worker's heartbeat (always: one small write every few seconds), its own
`/metrics` port if `metrics_port` is not None (jobkit.worker_metrics), a CONSUMER span per
pick-up if `tracing` names an exporter (jobkit.tracing), and JSON log lines that name their
job if `json_logs` (jobkit.logs). Job by job, it learns what happens through
jobkit.worker_events, which is attached only when one of those needs it.

In the API (main.py):

    observed = observe.Api(settings.queue_name, metrics=True, tracing=settings.tracing)
    app = FastAPI(..., telemetry=observed.telemetry())   # FastAPI's own HTTP metrics, spans
    app.include_router(observed.router(get_redis))        # GET /metrics
    ArqRedis(pool, job_serializer=observed.serializer(jobs.serialize), ...)
    with observed.enqueuing(job_id, function):             # around enqueue_job
        ...

And once, for a task whose failures are an expected outcome (fetch's 404):

    logs.expect_failures(FetchFailed)   # ARQ logs them in one line, no traceback

Metrics, tracing and JSON logs are each off unless a setting turns them on (the heartbeat is
always on); on, they cost what the docs' performance page says; off, nothing measurable.

A learner may skip this module and the ones it calls: the chapters show what they produce.
"""

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.telemetry import TelemetryConfig

from jobkit import heartbeat, logs
from jobkit.metrics import METRICS_PATH, ApiMetrics
from jobkit.tracing import ConsumerSpans, Serializer, Tracing
from jobkit.worker_events import Observer, attach, worker_of
from jobkit.worker_metrics import WorkerMetrics

_CTX_KEY = "jobkit_observe"
logger = logging.getLogger(__name__)


async def start_worker(
    ctx: dict[str, Any],
    queue_name: str,
    *,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    tracing: str = "",
    json_logs: bool = False,
    heartbeat_interval_s: float = heartbeat.INTERVAL_S,
    heartbeat_ttl_s: float = heartbeat.TTL_S,
    service_name: str = "worker",
) -> None:
    """Call from the worker's on_startup. `metrics_port`: None for none, 0 for a free port
    (the heartbeat says which), or the port; `tracing`: jobkit.tracing's setting."""
    if json_logs:
        logs.use_json_logs()
    try:
        worker = worker_of(ctx)
    except RuntimeError:  # the hook was called by hand (a script, a test), not by a worker
        logger.info("observe: not started by an arq Worker; nothing to observe")
        return
    observers: list[Observer] = []
    extra: dict[str, Any] = {}
    metrics = None
    if metrics_port is not None:
        metrics = WorkerMetrics(set(worker.functions))
        port = metrics.serve(metrics_port, metrics_host)
        where = socket.gethostname() if metrics_host in ("0.0.0.0", "::") else metrics_host
        extra["metrics"] = f"http://{where}:{port}/metrics"  # in the heartbeat: GET /queue
        logger.info("worker metrics on %s", extra["metrics"])
        observers.append(metrics)
    spans = Tracing(tracing, service_name)
    if spans.enabled:
        observers.append(ConsumerSpans(spans))
    if observers or json_logs:
        attach(ctx, observers)
    ctx[_CTX_KEY] = (metrics, spans)
    await heartbeat.start(
        ctx, queue_name, interval_s=heartbeat_interval_s, ttl_s=heartbeat_ttl_s, extra=extra
    )


async def stop_worker(ctx: dict[str, Any]) -> None:
    """Call from the worker's on_shutdown: leave the worker list, close the metrics port,
    and export the spans still buffered."""
    metrics, spans = ctx.pop(_CTX_KEY, (None, None))
    try:
        await heartbeat.stop(ctx)  # Redis may be gone by now: the rest still happens
    finally:
        if metrics is not None:
            metrics.close()
        if spans is not None:
            spans.shutdown()


class Api:
    """What the API needs: FastAPI's telemetry settings, GET /metrics, and the enqueue's span."""

    def __init__(
        self,
        queue_name: str,
        *,
        metrics: bool = False,
        tracing: str = "",
        json_logs: bool = False,
        service_name: str = "api",
    ) -> None:
        self.queue_name = queue_name
        self.metrics = ApiMetrics(queue_name) if metrics else None
        self.tracing = Tracing(tracing, service_name)
        self.json_logs = json_logs
        if json_logs:
            logs.use_json_logs()

    def telemetry(self) -> TelemetryConfig:
        """For `FastAPI(telemetry=...)`: its HTTP metrics into our /metrics, its request spans
        into our tracer; with both off, FastAPI measures nothing at all."""
        return {
            "meter_provider": self.metrics.meter_provider if self.metrics else None,
            "tracer_provider": self.tracing.provider,
            "metrics": self.metrics is not None,
            "tracing": self.tracing.enabled,
            "logs": False,  # FastAPI's own OpenTelemetry log records: we log ourselves
            "operation_spans": False,  # a span per request tells the story; not per dependency
            "exclude": lambda scope: scope.get("path") == METRICS_PATH,  # scrapes aren't traffic
        }

    def router(self, get_redis: Callable[..., Any]) -> APIRouter:
        """`GET /metrics` (no route when metrics are off); `get_redis`: the app's dependency."""
        return self.metrics.router(get_redis) if self.metrics is not None else APIRouter()

    def serializer(self, serialize: Serializer) -> Serializer:
        """The app's job serializer, carrying the trace context when tracing is on."""
        return self.tracing.serializer(serialize)

    @contextlib.contextmanager
    def enqueuing(self, job_id: str, function: str) -> Iterator[dict[str, str]]:
        """Around the enqueue: the PRODUCER span, and log lines that name the job. Yields the
        trace carrier (empty when tracing is off), for an app that stores it itself."""
        with contextlib.ExitStack() as stack:
            if self.json_logs:
                stack.enter_context(logs.about_job(job_id, function))
            yield stack.enter_context(self.tracing.sending(self.queue_name, job_id, function))

    def shutdown(self) -> None:
        """Export the spans still buffered (from the lifespan's exit)."""
        self.tracing.shutdown()
