"""`make bench`: how fast is a stage's queue, against a bare app? One table, side by side.

    python -m devkit.bench [--stage 2 --stage 3] [--duration 10] [--repeat 3] [--jobs 5000]

Every app runs at once, each on its own throwaway embedded Valkey and data folder, with one
uvicorn process and no access log: the yardstick (devkit/bare_app.py, a bare FastAPI + ARQ
app) and, when stage 3 or 4 runs, "bare+db" (the same app committing each job's row to
SQLite before it enqueues: the plainest committed record; phase 1 only), and the stages:
1. enqueue   POST /tasks/add at concurrency 10 for --duration s (wrk), no worker running;
             --repeat rounds, every app once a round (the order turns each round), after
             a short warm-up of each;
2. worker    --jobs `add` jobs queued through the API, then one `arq --burst` worker drains
             them; jobs/s = jobs / (last finish - first start), from ARQ's own timestamps;
3. latency   50 `add` jobs sent one at a time (50 ms apart) to a running worker;
             enqueue -> finish from the job's own timestamps, p50/p95;
4. status    GET /jobs/{id} of finished jobs at concurrency 50 for --duration s (wrk),
             in rounds as in 1.

Absolute figures on a shared machine drift by 2x from day to day; ratios between apps
measured in the same round do not. So each round's figures are also divided by the bare
app's (or another stage's) from that same round, and the table shows the median and the
min-max of those per-round ratios. The load generator is wrk (C, event-driven, one
thread), so the client is not the bottleneck; install it with `make tools`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import redis

from devkit import harness
from devkit.stages import ROOT, STAGES
from devkit.variant import VARIANTS

BARE = "devkit.bare_app"  # the yardstick: see its docstring
LATENCY_JOBS = 50
LATENCY_SPACING_S = 0.05
ENQUEUE_CONCURRENCY = 10
STATUS_CONCURRENCY = 50
STATUS_IDS = 1000
WARMUP_S = 2  # a fresh process's first requests are slower; not measured
TARGETS = {  # the goals the project set itself, on the 2-core reference machine
    "enqueue req/s": (">=", 2000),
    "worker jobs/s": (">=", 1500),
    "latency p50 ms": ("<=", 40),
    "latency p95 ms": ("<=", 80),
    "status p99 ms": ("<=", 50),
}
# Paired ratios the stages must reach, each measured within one round:
# (label, figure, app, the app it is divided by, op, target).
RATIO_TARGETS = [
    ("stage 2 enqueue / bare", "enqueue req/s", "stage 2", "bare", ">=", 0.85),
    ("stage 3 enqueue / stage 2", "enqueue req/s", "stage 3", "stage 2", ">=", 0.75),
    ("stage 4 enqueue / stage 2", "enqueue req/s", "stage 4", "stage 2", ">=", 0.75),
    (f"stage 4 status c={STATUS_CONCURRENCY} / stage 3", "status req/s", "stage 4", "stage 3",
     ">=", 0.90),
    *((f"stage {n} enqueue p99 / bare p99", "enqueue p99 ms", f"stage {n}", "bare", "<=", 1.5)
      for n in (2, 3, 4)),
    # What a ledger can reach: against the bare app that also commits a row per enqueue.
    *((f"stage {n} enqueue / bare+db", "enqueue req/s", f"stage {n}", "bare+db", ">=", 0.9)
      for n in (3, 4)),
    *((f"stage {n} enqueue p99 / bare+db p99", "enqueue p99 ms", f"stage {n}", "bare+db",
       "<=", 1.5) for n in (3, 4)),
]  # fmt: skip
RATIO_ROWS = ("req/s", "p99 ms")  # figures that also get a "vs bare" row per app


@dataclass
class App:
    """One app under test: the yardstick or a stage, and what the bench measured of it."""

    label: str  # "bare", "bare+db", "stage 2"
    runnable: harness.Runnable
    env: dict[str, str] = field(default_factory=dict)  # more environment for its processes
    enqueue_only: bool = False  # measured in phase 1 only (bare+db: the rest is bare's)
    variant: str | None = None  # devkit.variant: a performance choice undone (a stage's A/B)
    stack: harness.StageProcesses | None = None
    figures: dict[str, float | str] = field(default_factory=dict)  # measured once
    rounds: dict[str, list[float]] = field(default_factory=dict)  # one value per round
    finished: list[str] = field(default_factory=list)  # ids of completed jobs

    @property
    def slug(self) -> str:  # for file names: "stage_2", "bare_db"
        return re.sub(r"\W", "_", self.label)


def apps_for(stages: list[int], variants: list[tuple[int, str]] = ()) -> list[App]:
    """The yardstick, its ledger variant if a stage with a ledger runs, the stages, then each
    (stage, variant) asked for: that stage with one performance choice undone."""
    stages = sorted({*stages, *(n for n, _ in variants)})
    apps = [App("bare", BARE, env={"BARE_DB": "0"})]  # "0" whatever the shell says
    if any(n >= 3 for n in stages):
        apps.append(App("bare+db", BARE, env={"BARE_DB": "1"}, enqueue_only=True))
    apps += [App(f"stage {n}", n) for n in stages]
    return [*apps, *(App(f"stage {n} {name}", n, variant=name) for n, name in variants)]


def stage_processes(app: App, workdir: Path) -> harness.StageProcesses:
    """Valkey + uvicorn for one app, no worker yet (each phase starts its own)."""
    return harness.StageProcesses(
        app.runnable, workdir, workers=0,
        api_args=("--no-access-log", "--log-level", "warning"),
        env={**os.environ, "LOG_LEVEL": "WARNING", **app.env}, variant=app.variant,
    )  # fmt: skip


def run_wrk(url: str, path: str, concurrency: int, seconds: int, script: Path) -> dict:
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script)]
    out = subprocess.run([*command, url + path], capture_output=True, text=True, check=True).stdout
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def percentile(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * scale[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "req/s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50 ms": percentile("50"),
        "p99 ms": percentile("99"),
        "requests": int(re.search(r"(\d+) requests in", out)[1]),
        "errors": int(errors[1]) if errors else 0,
        "socket errors": socket_errors[1] if socket_errors else "none",
    }


def record_round(app: App, phase: str, wrk: dict) -> None:
    """Rates and latencies per round; errors and requests added up over the rounds."""
    for name in ("req/s", "p50 ms", "p99 ms"):
        app.rounds.setdefault(f"{phase} {name}", []).append(wrk[name])
    for name in ("requests", "errors"):
        app.figures[f"{phase} {name}"] = app.figures.get(f"{phase} {name}", 0) + wrk[name]
    seen = app.figures.get(f"{phase} socket errors", "none")
    app.figures[f"{phase} socket errors"] = wrk["socket errors"] if seen == "none" else seen


async def submit(url: str, count: int, concurrency: int = 20) -> list[str]:
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
        queue = asyncio.Queue[int]()
        for n in range(count):
            queue.put_nowait(n)

        async def one() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                response = await client.post("/tasks/add", json={"x": n, "y": 1})
                response.raise_for_status()
                ids.append(response.json()["job_id"])

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return ids


async def read_jobs(url: str, ids: list[str], concurrency: int = 50) -> list[dict]:
    # Bounded: thousands of requests queued on one httpx pool time out waiting for it.
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:

        async def one(job_id: str) -> dict:
            async with slots:
                return (await client.get(f"/jobs/{job_id}")).json()

        return await asyncio.gather(*(one(job_id) for job_id in ids))


def span_seconds(jobs: list[dict], start: str, end: str) -> list[float]:
    return [
        (datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds()
        for job in jobs
    ]


def in_turns(apps: list[App], rounds: int) -> list[tuple[int, App]]:
    """Every app once a round; each round starts one app later, so none is always first."""
    return [(n, apps[(n + i) % len(apps)]) for n in range(rounds) for i in range(len(apps))]


def bench_enqueue(apps: list[App], args: argparse.Namespace, script: Path) -> None:
    """1. enqueue rate (no worker: jobs pile up in Redis, which is what we measure)."""
    for app in apps:
        say(app, f"warm-up: POST /tasks/add, c={ENQUEUE_CONCURRENCY}, {WARMUP_S} s")
        run_wrk(app.stack.url, "/tasks/add", ENQUEUE_CONCURRENCY, WARMUP_S, script)
        redis.Redis.from_url(app.stack.redis_url).flushdb()
    for n, app in in_turns(apps, args.repeat):
        say(app, f"enqueue round {n + 1}/{args.repeat}: POST /tasks/add, "
                 f"c={ENQUEUE_CONCURRENCY}, {args.duration} s")  # fmt: skip
        wrk = run_wrk(app.stack.url, "/tasks/add", ENQUEUE_CONCURRENCY, args.duration, script)
        record_round(app, "enqueue", wrk)
        redis.Redis.from_url(app.stack.redis_url).flushdb()


def bench_worker(app: App, args: argparse.Namespace, round_: str = "") -> None:
    """2. worker throughput: queue N jobs, then one burst worker drains them."""
    stack, url = app.stack, app.stack.url
    say(app, f"worker{round_}: queueing {args.jobs} add jobs, then one burst worker")
    ids = asyncio.run(submit(url, args.jobs))
    started = time.monotonic()
    burst = stack.start_worker("--burst")
    if burst.process.wait() != 0:
        raise SystemExit(f"{app.label}: the burst worker failed; see {burst.log}")
    wall = time.monotonic() - started
    jobs = asyncio.run(read_jobs(url, ids))
    done = [job for job in jobs if job["status"] == "complete"]
    first = min(job["start_time"] for job in done)
    last = max(job["finish_time"] for job in done)
    busy = span_seconds([{"a": first, "b": last}], "a", "b")[0]
    app.rounds.setdefault("worker jobs/s", []).append(len(done) / busy)
    completed = app.figures.get("worker completed", "0/0").split("/")
    app.figures |= {
        "worker completed": f"{int(completed[0]) + len(done)}/{int(completed[1]) + args.jobs}",
        "worker wall s (incl. start-up)": wall,
    }
    app.finished = [job["job_id"] for job in done[:STATUS_IDS]]


def bench_latency(app: App) -> None:
    """3. enqueue -> complete latency with a running worker."""
    say(app, f"latency: {LATENCY_JOBS} jobs one at a time to a running worker")
    url = app.stack.url
    worker = app.stack.start_worker()  # returns once it polls, before the clock matters
    try:
        ids = []
        for _ in range(LATENCY_JOBS):
            ids.append(asyncio.run(submit(url, 1, 1))[0])
            time.sleep(LATENCY_SPACING_S)
        deadline = time.monotonic() + 30
        while True:
            jobs = asyncio.run(read_jobs(url, ids))
            if all(job["status"] == "complete" for job in jobs):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{app.label}: latency jobs did not complete")
            time.sleep(0.2)
    finally:
        worker.stop()
    latencies = sorted(s * 1000 for s in span_seconds(jobs, "enqueue_time", "finish_time"))
    app.figures |= {
        "latency p50 ms": statistics.median(latencies),
        "latency p95 ms": latencies[int(0.95 * len(latencies)) - 1],
    }


def bench_status(apps: list[App], args: argparse.Namespace, scripts: Path) -> None:
    """4. status reads of finished jobs, in rounds like the enqueue phase."""
    lua = {app.label: scripts / f"status_{app.slug}.lua" for app in apps}
    for app in apps:
        lua[app.label].write_text(
            "local ids = {" + ",".join(f'"{i}"' for i in app.finished) + "}\n"
            "request = function()\n"
            '  return wrk.format("GET", "/jobs/" .. ids[math.random(#ids)])\nend\n'
        )
    for n, app in in_turns(apps, args.repeat):
        say(app, f"status round {n + 1}/{args.repeat}: GET /jobs/{{id}} of finished jobs, "
                 f"c={STATUS_CONCURRENCY}, {args.duration} s")  # fmt: skip
        wrk = run_wrk(app.stack.url, "/", STATUS_CONCURRENCY, args.duration, lua[app.label])
        record_round(app, "status", wrk)


def say(app: App, line: str) -> None:
    print(f"[{app.label}] {line}", file=sys.stderr, flush=True)


# -- the table --------------------------------------------------------------------------------


def number(value: float, digits: int | None = None) -> str:
    """Thousands apart, and no decimals that are noise: 2,131 req/s, 17.2 ms, 0.53."""
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1
    return f"{value:,.{digits}f}"


def spread(values: list[float], digits: int | None = None) -> str:
    """The median, and the min-max when the values differ: "0.59 (0.55-0.62)"."""
    middle = number(statistics.median(values), digits)
    low, high = number(min(values), digits), number(max(values), digits)
    return middle if low == high else f"{middle} ({low}-{high})"


def ratios(app: App, base: App, figure: str) -> list[float]:
    """Round by round: this app's figure divided by the base app's in the same round."""
    return [a / b for a, b in zip(app.rounds[figure], base.rounds[figure], strict=True) if b]


def cell(app: App, name: str) -> str:
    if name in app.rounds:
        return spread(app.rounds[name])
    value = app.figures.get(name, "-")
    if isinstance(value, str):
        return value
    return number(value, 0 if isinstance(value, int) else None)


def figure_rows(apps: list[App]) -> list[tuple[str, list[str], str]]:
    """(name, a cell per app, the target) for every figure, a "vs bare" row after the rates."""
    names = list(dict.fromkeys(n for app in apps for n in [*app.rounds, *app.figures]))
    order = {phase: i for i, phase in enumerate(("enqueue", "worker", "latency", "status"))}
    names.sort(key=lambda name: order.get(name.split()[0], len(order)))
    bare = next((app for app in apps if app.label == "bare"), None)
    rows = []
    for name in names:
        target = f"(target {TARGETS[name][0]} {TARGETS[name][1]})" if name in TARGETS else ""
        rows.append((name, [cell(app, name) for app in apps], target))
        if bare is not None and name in bare.rounds and name.endswith(RATIO_ROWS):
            rows.append((f"  {name.split()[1]} vs bare",
                         [spread(ratios(app, bare, name), 2) if name in app.rounds else "-"
                          for app in apps], ""))  # fmt: skip
    return rows


def target_rows(apps: list[App]) -> list[str]:
    by_label = {app.label: app for app in apps}
    lines = []
    for label, figure, name, base, op, target in RATIO_TARGETS:
        apps_ran = name in by_label and base in by_label
        if not apps_ran or not all(figure in by_label[a].rounds for a in (name, base)):
            continue
        values = ratios(by_label[name], by_label[base], figure)
        median = statistics.median(values)
        ok = median >= target if op == ">=" else median <= target
        lines.append(f"{label:<34}{spread(values, 2):>20}   target {op} {target:.2f}   "
                     f"{'meets' if ok else 'MISSES'}")  # fmt: skip
    return lines


def variant_rows(apps: list[App]) -> list[str]:
    """Each variant beside its own stage, figure by figure, paired by round."""
    by_label = {app.label: app for app in apps}
    lines = []
    for app in apps:
        base = by_label.get(f"stage {app.runnable}") if app.variant else None
        if base is None:
            continue
        for figure in app.rounds:
            if figure in base.rounds:
                label = f"{app.label} / stage {app.runnable}: {figure}"
                lines.append(f"{label:<58}{spread(ratios(app, base, figure), 2):>20}")
    return lines


def render(apps: list[App], args: argparse.Namespace) -> str:
    rows = figure_rows(apps)
    width = max(len(name) for name, _, _ in rows) + 2
    column = max(14, *(len(c) + 2 for _, cells, _ in rows for c in cells),
                 *(len(app.label) + 2 for app in apps))  # fmt: skip
    lines = [
        # Not platform.platform(): it runs `uname -p`, a process, for a word we do not show.
        f"machine: {os.cpu_count()} CPUs, {platform.system()} {platform.release()} "
        f"{platform.machine()}, "
        f"Python {platform.python_version()}",
        "load generator: wrk (1 thread); API: 1 uvicorn process; 1 ARQ worker",
        f"enqueue and status: {args.repeat} rounds of {args.duration} s, every app once a round; "
        "median (min-max) over the rounds; 'vs bare': the ratio within each round",
        "",
        "".ljust(width) + "".join(app.label.rjust(column) for app in apps),
    ]
    for name, cells, target in rows:
        lines.append(name.ljust(width) + "".join(c.rjust(column) for c in cells)
                     + (f"  {target}" if target else ""))  # fmt: skip
    if targets := target_rows(apps):
        lines += ["", "paired ratios (median (min-max) of the per-round ratios):", *targets]
    if variants := variant_rows(apps):
        lines += ["", "performance choices undone (devkit/variant.py), against the stage as it is:",
                  *variants]  # fmt: skip
    return "\n".join(lines)


PHASES = ("enqueue", "worker", "latency", "status")
PUBLISHED = ROOT / "docs" / "results" / "bench.md"


def variant_arg(value: str) -> tuple[int, str]:
    number, _, name = value.partition(":")
    if not number.isdigit() or int(number) not in STAGES or name not in VARIANTS:
        raise argparse.ArgumentTypeError(f"STAGE:VARIANT, the variant one of {sorted(VARIANTS)}")
    return int(number), name


def run_phases(apps: list[App], args: argparse.Namespace, tmp: Path) -> None:
    post_add = tmp / "post_add.lua"
    post_add.write_text(
        'wrk.method = "POST"\nwrk.body = \'{"x": 5, "y": 10}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    if "enqueue" in args.phases:
        bench_enqueue(apps, args, post_add)
    rest = [app for app in apps if not app.enqueue_only]
    if {"worker", "status"} & set(args.phases):  # status reads the jobs the worker finished
        for n, app in in_turns(rest, args.repeat if "worker" in args.phases else 1):
            bench_worker(app, args, f" round {n + 1}")
    if "latency" in args.phases:
        for app in rest:
            bench_latency(app)
    if "status" in args.phases:
        bench_status(rest, args, tmp)


def publish(table: str, argv: list[str]) -> None:
    """The table as the docs' performance page includes it, with how it was made."""
    command = " ".join(["python -m devkit.bench", *argv])
    PUBLISHED.write_text(
        f"<!-- written by `{command} --publish`; do not edit -->\n"
        f"Recorded with `{command}` on {datetime.now():%Y-%m-%d}:\n\n"
        f"```text\n{table}\n```\n",
        encoding="utf-8",
    )
    print(f"wrote {PUBLISHED.relative_to(ROOT)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--stage", type=int, action="append", choices=[n for n in STAGES if n >= 2],
                        help="repeat for several; default: every stage with a worker")  # fmt: skip
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the paired phases")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per worker round")
    parser.add_argument("--phases", type=lambda v: v.split(","), default=list(PHASES),
                        help=f"some of {','.join(PHASES)} (default: all)")  # fmt: skip
    undone = "; ".join(f"{name}: {what}" for name, what in VARIANTS.items())
    parser.add_argument("--variant", type=variant_arg, action="append", default=[],
                        metavar="STAGE:VARIANT", help=f"also that stage with a choice undone "
                        f"({undone})")  # fmt: skip
    parser.add_argument("--publish", action="store_true",
                        help=f"also write the table to {PUBLISHED.relative_to(ROOT)}")  # fmt: skip
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(raw)
    if unknown := set(args.phases) - set(PHASES):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make tools`, `apt-get install wrk` or `brew install wrk`")
        return 1
    stages = args.stage or [n for n in STAGES if n >= 2]
    apps = apps_for(stages, args.variant)
    with contextlib.ExitStack() as running:
        tmp = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        for app in apps:
            say(app, "starting its Valkey and API")
            app.stack = running.enter_context(stage_processes(app, tmp / app.slug))
        run_phases(apps, args, tmp)
    table = render(apps, args)
    print(table)
    if args.publish:
        publish(table, [arg for arg in raw if arg != "--publish"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
