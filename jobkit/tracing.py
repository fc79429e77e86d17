"""One trace from the HTTP request to each try of its job, with OpenTelemetry. Off by default.

FastAPI makes the request's SERVER span itself (given a tracer provider: jobkit.observe's
`telemetry()` passes ours). This module adds the rest, in OpenTelemetry's messaging terms
(`messaging.system` "arq", `messaging.destination.name` the queue, `messaging.message.id` the
job id): a PRODUCER span "send <queue>" around the enqueue, and in the worker a CONSUMER span
"process <queue>" for every pick-up of the job, a child of the PRODUCER span, so every try of
a retried job (`arq.job.try`) sits in the one trace that began with the request.

The context has to cross from the API process to the worker's, and an ARQ job has no
headers. The carrier we recommend is the job's own payload: ARQ stores a job as a dict
({"f": function, "a": args, "k": kwargs, ...}) and reads only its own keys back, so
`Tracing.serializer` adds a `trace_context` key (W3C `traceparent`) as the job is enqueued,
and the worker reads it back as ARQ reads the job (jobkit.worker_events). It is written in
ARQ's own enqueue transaction, costs no extra round trip, stays with the job through every
retry (the payload is kept until the job ends), leaves the job's arguments alone, and works
from stage 2 on. A ledger row's column is the other natural carrier (from stage 3):
`sending()` yields the carrier for an app that stores it itself. But the worker would then
read the row before each try, a query per try, to start the try's span under it; this module
does not do that, and the payload is what we recommend.

One setting turns tracing on, naming where spans go:
- "" (the default): off; nothing here runs and nothing is measured;
- "otlp": OTLP over HTTP, to OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT
  (the standard variables; default http://localhost:4318), e.g. Jaeger or an OTel Collector;
- "console": printed to stdout, one JSON span at a time;
- "file:<path>": appended to a file, one JSON span a line (works offline; tests read it).

jobkit keeps its own tracer provider and hands it to FastAPI; it does not install it as
OpenTelemetry's global one (call `trace.set_tracer_provider(tracing.provider)` if other
libraries in your app should use it too).

A learner may skip this module: the stage 4 chapter shows a trace, and one setting turns it on.
"""

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobkit.worker_events import CARRIER_KEY, Pickup

Serializer = Callable[[dict[str, Any]], bytes]  # ARQ's job_serializer
_W3C = TraceContextTextMapPropagator()  # the W3C `traceparent` header, whatever else is set up
FINAL_ERRORS = ("failed", "timeout")  # outcomes that mark a consumer span as an error


def inject(context: otel_context.Context | None = None) -> dict[str, str]:
    """The current trace context (or `context`) as a plain dict: a carrier to store anywhere."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str] | None) -> otel_context.Context:
    """The trace context a carrier holds (an empty context for an empty carrier)."""
    return _W3C.extract(dict(carrier or {}))


def _exporter(setting: str) -> SpanExporter:
    if setting == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads the standard OTEL_EXPORTER_OTLP_* variables
    if setting == "console":
        return ConsoleSpanExporter(out=sys.stdout)  # the stdout of now, not of import time
    if setting.startswith("file:"):
        return _FileExporter(Path(setting.removeprefix("file:")))
    raise ValueError(f"tracing must be '', 'otlp', 'console' or 'file:<path>', not {setting!r}")


class _FileExporter(ConsoleSpanExporter):
    """Spans as JSON lines, appended to a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: IO[str] = path.open("a", encoding="utf-8")
        super().__init__(out=self.file, formatter=_one_line)

    def shutdown(self) -> None:
        self.file.close()


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


class Tracing:
    """Tracing for one process (the API or a worker), as `setting` says (module docstring)."""

    def __init__(self, setting: str, service_name: str) -> None:
        self.provider: TracerProvider | None = None
        if setting:
            # Every trace is sampled unless OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the
            # standard variables, read by the SDK) say otherwise, e.g. traceidratio and 0.1.
            self.provider = TracerProvider(
                resource=Resource.create({"service.name": service_name}),
                shutdown_on_exit=False,
            )
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(setting)))
            self.tracer = self.provider.get_tracer("jobkit.tracing")

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    @contextlib.contextmanager
    def sending(self, queue: str, job_id: str, function: str) -> Iterator[dict[str, str]]:
        """Around an enqueue: the PRODUCER span. Yields its carrier, for a ledger column."""
        if self.provider is None:
            yield {}
            return
        attributes = _attributes(queue, job_id, "send") | {"arq.job.function": function}
        with self.tracer.start_as_current_span(
            f"send {queue}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            yield inject()

    def serializer(self, serialize: Serializer) -> Serializer:
        """The app's job serializer, adding the current trace context to each job's payload."""
        if self.provider is None:
            return serialize

        def serialize_with_context(data: dict[str, Any]) -> bytes:
            if "s" not in data and (carrier := inject()):  # a job, not a result
                data = {**data, CARRIER_KEY: carrier}
            return serialize(data)

        return serialize_with_context

    def shutdown(self) -> None:
        """Export what is buffered, and stop (a process's last act)."""
        if self.provider is not None:
            self.provider.shutdown()


def _attributes(queue: str, job_id: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "arq",
        "messaging.destination.name": queue,
        "messaging.message.id": job_id,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


class ConsumerSpans:
    """In the worker: a CONSUMER span per pick-up (a jobkit.worker_events observer). It is the
    current span while ARQ handles the job, so the job's own spans are its children."""

    def __init__(self, tracing: Tracing) -> None:
        assert tracing.provider is not None, "tracing is off"
        self.tracer = tracing.tracer

    def picked(self, pickup: Pickup) -> None:
        attributes = _attributes(pickup.queue, pickup.job_id, "process")
        span = self.tracer.start_span(
            f"process {pickup.queue}",
            context=extract(pickup.carrier),
            kind=SpanKind.CONSUMER,
            attributes=attributes | {"arq.job.function": pickup.function},
        )
        pickup.extra["span"] = span
        pickup.extra["otel_token"] = otel_context.attach(trace.set_span_in_context(span))
        pickup.extra["trace_id"] = trace.format_trace_id(span.get_span_context().trace_id)

    def started(self, pickup: Pickup) -> None:
        if span := pickup.extra.get("span"):
            span.set_attribute("arq.job.try", pickup.job_try)

    def ended(self, pickup: Pickup) -> None:
        span = pickup.extra.pop("span", None)
        if span is None:
            return
        span.set_attribute("arq.job.outcome", pickup.outcome or "")
        error = pickup.stored[1] if pickup.stored else pickup.raised
        if pickup.outcome in FINAL_ERRORS:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()
        otel_context.detach(pickup.extra.pop("otel_token"))
