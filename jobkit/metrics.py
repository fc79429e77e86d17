"""The API's Prometheus `GET /metrics`: the queue as it is at scrape time, and FastAPI's own
HTTP metrics, in one endpoint.

- `queue_jobs{queue,state}` (state: ready, scheduled, running), `queue_oldest_ready_age_seconds
  {queue}` and `workers_alive{queue}` are read from Redis when Prometheus scrapes, in one
  place (jobkit.queue_state.read_queue, the same read as `GET /queue`): nothing in the app
  keeps them up to date between scrapes, so they cannot drift from the queue.
- FastAPI (0.142 and later) measures its own requests with OpenTelemetry
  (`http.server.request.duration`, `http.server.active_requests`) once it is given a meter
  provider. Ours reads them with OpenTelemetry's Prometheus reader into the same registry, so
  the same scrape returns them as `http_server_request_duration_seconds` and
  `http_server_active_requests`: no second HTTP middleware measures the same requests.

prometheus-client's collectors are synchronous, and Redis is read asynchronously here, on the
app's own pool. So the route reads the queue first (awaiting, never blocking the event loop),
hands that reading to the collector, and renders the registry right after, with no await in
between: two scrapes at once cannot see each other's reading.

    metrics = ApiMetrics(settings.queue_name)
    app = FastAPI(telemetry={"meter_provider": metrics.meter_provider})  # HTTP metrics
    app.include_router(metrics.router(get_redis))                       # GET /metrics

(jobkit.observe.Api does both, with its telemetry settings.)

A learner may skip this module: the stage 4 API serves it with a line or two.
"""

import logging
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Response
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from redis.asyncio import Redis
from redis.exceptions import RedisError

from jobkit.queue_state import QueueView, read_queue

METRICS_PATH = "/metrics"
logger = logging.getLogger(__name__)


class QueueCollector:
    """Turns one reading of the queue into Prometheus gauges, when the registry collects."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        self.reading: QueueView | None = None  # set by the route just before it renders

    def describe(self) -> list[Metric]:
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.reading)

    def _families(self, view: QueueView | None) -> Iterator[Metric]:
        queue = [self.queue_name]
        jobs = GaugeMetricFamily(
            "queue_jobs", "Jobs in the queue, by state", labels=["queue", "state"]
        )
        age = GaugeMetricFamily(
            "queue_oldest_ready_age_seconds",
            "How long the oldest ready job has waited (0: none is waiting)",
            labels=["queue"],
        )
        alive = GaugeMetricFamily(
            "workers_alive", "Workers whose heartbeat is live", labels=["queue"]
        )
        if view is not None:
            for state in ("ready", "scheduled", "running"):
                jobs.add_metric([*queue, state], getattr(view, state))
            age.add_metric(queue, view.oldest_ready_age_s or 0.0)
            alive.add_metric(queue, len(view.workers))
        yield from (jobs, age, alive)


class ApiMetrics:
    """One registry for the API: the queue's gauges and FastAPI's HTTP metrics."""

    def __init__(self, queue_name: str) -> None:
        self.registry = CollectorRegistry()
        self.queue = QueueCollector(queue_name)
        self.registry.register(self.queue)
        reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        self.meter_provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)

    async def render(self, redis: Redis) -> bytes:
        try:
            self.queue.reading = await read_queue(redis, self.queue.queue_name)
        except (RedisError, OSError) as exc:
            # Redis away: the scrape still answers, with the HTTP metrics and without the
            # queue's gauges (alert on their absence), rather than failing as a whole.
            logger.warning("metrics: queue not read: %r", exc)
            self.queue.reading = None
        return generate_latest(self.registry)  # at once: no await between reading and use

    def router(self, get_redis: Callable[..., Any]) -> APIRouter:
        """`GET /metrics`, reading Redis with the app's own pool (`get_redis`, a dependency)."""
        router = APIRouter(tags=["operations"])

        @router.get(METRICS_PATH, response_class=Response, summary="Prometheus metrics")
        async def metrics(redis: Redis = Depends(get_redis)) -> Response:
            return Response(await self.render(redis), media_type=CONTENT_TYPE_LATEST)

        return router
