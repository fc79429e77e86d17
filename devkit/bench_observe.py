"""What seeing the queue costs: jobkit.observe's settings, paired against each other.

    python -m devkit.bench_observe [--duration 10] [--repeat 3] [--jobs 5000]

One small app (devkit/observed_app.py) runs four ways at once, each with its own Valkey and
uvicorn process, measured one at a time in turns, as `make bench` measures the stages
(devkit/bench.py: wrk at concurrency 10 for the enqueue rate, one `arq --burst` worker
draining --jobs `add` jobs for jobs/s, from ARQ's own timestamps):

- "plain":    no jobkit.observe at all;
- "off":      jobkit.observe wired in, every setting off (the heartbeat only);
- "metrics":  GET /metrics on the API (FastAPI's HTTP metrics recorded on every request) and a
              metrics port on the worker (every pick-up observed);
- "tracing":  spans for every request, enqueue and try, sampled at 100 %, to a file.

The table gives each figure's median over the rounds, and each way's ratio to "off" and to
"plain" within each round (median, min-max). Not part of `make test`: it takes minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from devkit import bench

APP = "devkit.observed_app"
FIGURES = ("enqueue req/s", "enqueue p99 ms", "worker jobs/s")


def ways(tmp: Path) -> list[bench.App]:
    return [
        bench.App("plain", APP, env={"OBSERVE": "0"}),
        bench.App("off", APP),
        bench.App("metrics", APP, env={"METRICS": "1"}),
        bench.App("tracing", APP, env={"TRACING": f"file:{tmp / 'spans.jsonl'}"}),
    ]


def render(apps: list[bench.App]) -> str:
    lines = [f"{'':<18}" + "".join(f"{app.label:>22}" for app in apps)]
    by_label = {app.label: app for app in apps}
    for figure in FIGURES:
        lines.append(f"{figure:<18}" + "".join(
            f"{bench.spread(app.rounds[figure]):>22}" for app in apps))  # fmt: skip
        for base in ("off", "plain"):
            cells = [bench.spread(bench.ratios(app, by_label[base], figure), 3)
                     for app in apps]  # fmt: skip
            lines.append(f"{'  / ' + base:<18}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.bench_observe",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each phase")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per worker round")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: `make tools`, `apt-get install wrk` or `brew install wrk`")
        return 1
    with contextlib.ExitStack() as running:
        tmp = Path(running.enter_context(tempfile.TemporaryDirectory(prefix="bench-observe-")))
        apps = ways(tmp)
        for app in apps:
            bench.say(app, "starting its Valkey and API")
            app.stack = running.enter_context(bench.stage_processes(app, tmp / app.slug))
        script = tmp / "post_add.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.body = \'{"x": 5, "y": 10}\'\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
        bench.bench_enqueue(apps, args, script)
        for n, app in bench.in_turns(apps, args.repeat):
            bench.bench_worker(app, args, f" round {n + 1}")
    print(f"{args.repeat} rounds; enqueue: wrk c={bench.ENQUEUE_CONCURRENCY} for "
          f"{args.duration} s; worker: {args.jobs} jobs, one burst worker")  # fmt: skip
    print(render(apps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
