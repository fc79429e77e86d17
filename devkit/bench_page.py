"""What open jobs pages cost the API: `/ping` and `GET /jobs/{id}` p95 with no page open and
with --pages open, in paired rounds of one run.

    python -m devkit.bench_page [--stage 4] [--pages 100] [--rounds 4] [--seconds 6]

Starts the stage (embedded Valkey, API, one worker) on a throwaway data folder. In each
round, a helper process keeps jobs moving (--rate report jobs a second, each reporting
progress, so an open page has something to hear) and holds no page open, then --pages
pages: each an open `GET /events` stream read to the end, as a browser tab's EventSource,
from an address of its own (X-Forwarded-For, which uvicorn takes from loopback, so the
per-client cap does not refuse them), and as stage 4's page, `GET /stats` and `GET /cron`
every CHARTS_EVERY_S (--charts-every). Meanwhile this process asks `/ping` and
`GET /jobs/{id}` in turn, one request at a time, and prints each phase's p95 and the ratio
of the two in each round. Not a test: a figure for a person (the issue's bound: `/ping`
p95 at most 20 % slower, `GET /jobs/{id}` at most 30 %).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from devkit.harness import StageProcesses

SETTLE_S = 2.0  # after the helper starts: its pages connect, its jobs start moving
WARM_UP_S = 2.0  # measured, not counted
CHARTS_EVERY_S = 30.0  # as the page's charts.js (REFRESH_MS)
OPEN_DEADLINE_S = 30.0


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


async def measure(url: str, job_id: str, seconds: float) -> dict[str, float]:
    """p95 in milliseconds of /ping and GET /jobs/{id}, asked in turn for `seconds`."""
    times: dict[str, list[float]] = {"/ping": [], "/jobs/{id}": []}
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, path in [("/ping", "/ping"), ("/jobs/{id}", f"/jobs/{job_id}")]:
                started = time.perf_counter()
                response = await client.get(path)
                response.raise_for_status()
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: p95(samples) for name, samples in times.items()}


# --- the helper process: pages held open, jobs kept moving --------------------------------
async def hold(url: str, pages: int, rate: float, charts_every_s: float) -> None:
    opened = asyncio.Event()
    count = 0

    async def charts(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        if not charts_every_s:
            return
        await asyncio.sleep(random.uniform(0, charts_every_s))  # the tabs were opened apart
        while True:  # stage 4's page reads its charts and cron runs this often
            for path in ("/stats", "/cron"):
                await client.get(path, headers=headers)  # a 404 in stage 3: no charts there
            await asyncio.sleep(charts_every_s)

    async def page(n: int) -> None:
        nonlocal count
        address = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256 + 1}"
        async with httpx.AsyncClient(base_url=url, timeout=None) as client:
            headers = {"X-Forwarded-For": address}
            tasks.append(asyncio.create_task(charts(client, headers)))
            while True:  # a tab's EventSource reconnects after a stream ends
                async with client.stream("GET", "/events", headers=headers) as stream:
                    if stream.status_code != 200:
                        raise SystemExit(f"page {n}: GET /events answered {stream.status_code}")
                    count += 1
                    if count == pages:
                        opened.set()
                    async for _ in stream.aiter_lines():
                        pass

    async def submit() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            while True:
                body = {"steps": 5, "step_seconds": 0.2}
                (await client.post("/tasks/report", json=body)).raise_for_status()
                await asyncio.sleep(1 / rate)

    tasks: list[asyncio.Task[None]] = []
    tasks += [asyncio.create_task(page(n)) for n in range(pages)]
    tasks.append(asyncio.create_task(submit()))
    if pages:
        await asyncio.wait_for(opened.wait(), OPEN_DEADLINE_S)
    print("ready", flush=True)
    await asyncio.gather(*tasks)


def start_helper(url: str, pages: int, rate: float, charts_every_s: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "devkit.bench_page", "--hold", url]
    command += ["--pages", str(pages), "--rate", str(rate), "--charts-every", str(charts_every_s)]
    helper = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert helper.stdout is not None
    if helper.stdout.readline().strip() != "ready":
        helper.kill()
        raise SystemExit(f"the helper holding {pages} pages did not start")
    time.sleep(SETTLE_S)
    return helper


def run(stage: int, pages: int, rounds: int, seconds: float, rate: float, charts_s: float) -> None:
    with tempfile.TemporaryDirectory() as folder, StageProcesses(stage, Path(folder)) as procs:
        body = {"steps": 1, "step_seconds": 0}
        job_id = httpx.post(f"{procs.url}/tasks/report", json=body).json()["job_id"]
        print(f"stage {stage}: {pages} pages open vs none, {rounds} paired rounds of {seconds} s")
        print(f"{'round':>5} {'pages':>5} {'/ping p95 ms':>13} {'/jobs/{id} p95 ms':>18}")
        ratios: dict[str, list[float]] = {"/ping": [], "/jobs/{id}": []}
        asyncio.run(measure(procs.url, job_id, WARM_UP_S))  # first requests are slower
        for n in range(1, rounds + 1):
            found = {}
            # Which phase goes first alternates, so a drift over the run favours neither.
            for open_pages in (0, pages) if n % 2 else (pages, 0):
                helper = start_helper(procs.url, open_pages, rate, charts_s)
                try:
                    found[open_pages] = asyncio.run(measure(procs.url, job_id, seconds))
                finally:
                    helper.kill()
                    helper.wait()
                ping, job = found[open_pages]["/ping"], found[open_pages]["/jobs/{id}"]
                print(f"{n:>5} {open_pages:>5} {ping:>13.2f} {job:>18.2f}")
            for name in ratios:
                ratios[name].append(found[pages][name] / found[0][name])
        for name, values in ratios.items():
            shown = ", ".join(f"{value:.2f}" for value in values)
            median = statistics.median(values)
            print(f"{name}: p95 with {pages} pages / with none: median {median:.2f} ({shown})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=int, default=4)
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=2.0, help="report jobs a second")
    parser.add_argument(
        "--charts-every", type=float, default=CHARTS_EVERY_S, help="seconds; 0: no chart reads"
    )
    parser.add_argument("--hold", metavar="URL", help=argparse.SUPPRESS)  # the helper process
    args = parser.parse_args()
    if args.hold:
        asyncio.run(hold(args.hold, args.pages, args.rate, args.charts_every))
    else:
        run(args.stage, args.pages, args.rounds, args.seconds, args.rate, args.charts_every)


if __name__ == "__main__":
    main()
