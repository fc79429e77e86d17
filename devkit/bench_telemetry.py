"""What FastAPI's own HTTP metrics and spans cost a request, in-process: no network, no server.

    python -m devkit.bench_telemetry [--requests 4000] [--rounds 5]

The same one-route app (a POST with a JSON body) three ways: no telemetry, `jobkit.observe`'s
metrics on (FastAPI records them in the OpenTelemetry SDK), and tracing on at 100 % to a file.
Each round drives every way with the same number of ASGI calls, in turns; the figure is
microseconds per request, median (min-max) over the rounds. devkit/bench_observe.py measures
the same settings through uvicorn and wrk, where this cost is a share of a whole request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from jobkit import observe

BODY = b'{"x": 5, "y": 10}'
SCOPE: dict[str, Any] = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
    "scheme": "http", "path": "/tasks/add", "raw_path": b"/tasks/add", "query_string": b"",
    "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
}  # fmt: skip


def app(metrics: bool, tracing: str) -> FastAPI:
    observed = observe.Api("arq:queue", metrics=metrics, tracing=tracing, json_logs=False)
    made = FastAPI(telemetry=observed.telemetry())

    @made.post("/tasks/add", status_code=202)
    async def add(body: dict[str, int]) -> dict[str, str]:
        return {"job_id": "0" * 32}

    return made


async def per_request_us(asgi: FastAPI, requests: int) -> float:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 202:
            raise RuntimeError(f"the app answered {message['status']}")

    started = time.perf_counter()
    for _ in range(requests):
        await asgi(dict(SCOPE), receive, send)
    return (time.perf_counter() - started) / requests * 1e6


async def measure(requests: int, rounds: int, spans: Path) -> dict[str, list[float]]:
    ways = {"off": app(False, ""), "metrics": app(True, ""), "tracing": app(False, f"file:{spans}")}
    for asgi in ways.values():
        await per_request_us(asgi, requests // 10)  # warm up
    figures: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, asgi in ways.items():
            figures[name].append(await per_request_us(asgi, requests))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_telemetry",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--requests", type=int, default=4000, help="requests per way a round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        figures = asyncio.run(measure(args.requests, args.rounds, Path(tmp) / "spans.jsonl"))
    off = statistics.median(figures["off"])
    print(f"{args.rounds} rounds of {args.requests} requests a way, in-process ASGI calls")
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"{name:<8} {median:7.1f} µs/request ({min(values):.1f}-{max(values):.1f}), "
              f"+{median - off:.1f} µs over off")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
