"""A worker's own Prometheus metrics, on a port of its own: what its jobs do.

Every worker process serves `GET /metrics` on its own port (prometheus-client's small HTTP
server, in a thread: the worker's event loop never serves a scrape). Prometheus scrapes each
worker, on each host, and adds them up. The numbers, per worker process:

- `jobs_started_total{function}`: tries whose function started;
- `jobs_finished_total{function,outcome}`: jobs that ended for good, outcome one of
  complete, failed, timeout, cancelled; a job that used up its tries is counted here too,
  though its function never ran that last time (jobkit.worker_events);
- `jobs_retried_total{function}`: tries that ended to be run again (Retry, or a shutdown);
- `job_duration_seconds{function,outcome}`: how long each try ran;
- `job_queue_wait_seconds{function}`: from when a job was due to when its try started;
- `jobs_in_progress`: tries running now.

Labels are bounded: a function name the worker does not know (a job for a function that does
not exist) is `<unknown>`, and a job id is never a label (each would be a time series of its
own, forever).

The port: None serves nothing; 0 lets the OS pick a free port (several workers on one host
need several ports), which `serve()` returns so the heartbeat can say where it is; any other
number is that port. Prometheus needs fixed ports, or the ports from the heartbeats.

A learner may skip this module: the stage 4 worker turns it on with one setting.
"""

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jobkit.worker_events import UNKNOWN, Pickup

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAIT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class WorkerMetrics:
    """The metrics of one worker process, fed by jobkit.worker_events (it is an observer)."""

    def __init__(self, functions: set[str]) -> None:
        self.functions = functions  # the names this worker runs: any other is <unknown>
        self.registry = CollectorRegistry()  # our own: several workers may share a process
        self.jobs_started = Counter(
            "jobs_started", "Tries whose function started", ["function"], registry=self.registry
        )
        self.jobs_finished = Counter(
            "jobs_finished", "Jobs that ended for good, by outcome", ["function", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.jobs_retried = Counter(
            "jobs_retried", "Tries that ended to be run again", ["function"], registry=self.registry
        )
        self.job_duration = Histogram(
            "job_duration_seconds", "How long each try ran", ["function", "outcome"],
            buckets=DURATION_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.job_queue_wait = Histogram(
            "job_queue_wait_seconds", "From when a job was due to when its try started",
            ["function"], buckets=WAIT_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.jobs_in_progress = Gauge(
            "jobs_in_progress", "Tries running now", registry=self.registry
        )
        self._server: WSGIServer | None = None

    def _function(self, pickup: Pickup) -> str:
        return pickup.function if pickup.function in self.functions else UNKNOWN

    def picked(self, pickup: Pickup) -> None:
        pass

    def started(self, pickup: Pickup) -> None:
        function = self._function(pickup)
        self.jobs_started.labels(function).inc()
        self.job_queue_wait.labels(function).observe(pickup.queue_wait_s or 0.0)
        self.jobs_in_progress.inc()

    def ended(self, pickup: Pickup) -> None:
        function, outcome = self._function(pickup), pickup.outcome or "failed"
        if pickup.ran:
            self.jobs_in_progress.dec()
            self.job_duration.labels(function, outcome).observe(pickup.duration_s or 0.0)
        if outcome == "retried":
            self.jobs_retried.labels(function).inc()
        else:
            self.jobs_finished.labels(function, outcome).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve GET /metrics on host:port (0: a free port); returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
