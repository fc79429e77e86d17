"""`make loadtest`: step the offered load up until each stage gives way, and say where.

    python -m loadtests.compare [--step-seconds 10] [--variants stage1-async,stage2,stage2-w2]
                                [--cpu-rates 0.25,0.5,1,2,3,4,6,8] [--io-rates 2,4,...,128]
                                [--loads cpu,io] [--all-steps] [--publish]

For each variant (stage 1 with its `async def` crunch, stage 1 with its `def` crunch_sync,
every stage 2+ package on disk with one ARQ worker, and stage 2 with two: `stage2-w2`) it
starts the stage on free ports with its own embedded Valkey and data folder, then runs one
headless Locust process per step, each --step-seconds long:

- idle:      the prober alone: the variant's baseline;
- cpu-<r>:   the prober + crunch jobs (~200 ms of pure-Python CPU each) offered at r per second,
             for each r of --cpu-rates, lowest first;
- io-<r>:    the prober + wait jobs (1 s sleeps) at each r of --io-rates.

The prober runs at --prober-rate throughout. After each step the runner waits (up to
DRAIN_LIMIT_S) for the accepted work to finish, so the next step starts from an empty queue;
if it does not finish, the stage is started afresh. Once a variant's prober is past both bars
of `knee.py` in two steps in a row, its higher rates of that load are skipped: they would only
break it further.

It writes Locust's CSV and HTML per step, results.json (every step, and the knees),
summary.md and two charts into the results folder; --publish also copies summary.md and the
charts to docs/results/, which the load-testing and when-to-use pages include.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devkit.stages import ROOT, STAGES
from loadtests import charts, knee, report, steps
from loadtests.stack import Stack
from loadtests.steps import Variant

DOCS_RESULTS = ROOT / "docs" / "results"
CHARTS = {"prober_latency.png": charts.prober_chart, "queue_wait.png": charts.queue_chart}
CPU_RATES = "0.25,0.5,1,2,3,4,6,8"
IO_RATES = "2,4,8,16,32,64,128"
TWO_WORKERS = "stage2-w2"  # the worker-count comparison: the first queued stage, two workers
PAST_BOTH_BARS_STEPS = 2  # steps in a row past both bars of knee.py: higher rates are not run
VARIANT_NAME = re.compile(r"stage(\d+)(?:-w(\d+))?$")


def stage1_variants() -> list[Variant]:
    return [
        Variant("stage1-async", 1, "crunch", "`async def` task, on the API's event loop"),
        Variant("stage1-def", 1, "crunch_sync", "`def` task, in the API's thread pool", io=False),
    ]


def queued_variant(name: str) -> Variant | None:
    """`stage3` (one worker) or `stage3-w2` (two), for any stage 2+ package on disk."""
    match = VARIANT_NAME.match(name)
    if not match or int(match[1]) not in STAGES or int(match[1]) < 2:
        return None
    workers = int(match[2] or 1)
    where = "ARQ worker process" if workers == 1 else f"{workers} ARQ worker processes"
    return Variant(name, int(match[1]), "crunch", where, workers=workers)


def default_variants() -> list[Variant]:
    queued = [queued_variant(f"stage{number}") for number in sorted(STAGES) if number >= 2]
    return stage1_variants() + [v for v in [*queued, queued_variant(TWO_WORKERS)] if v]


def variants_named(names: list[str]) -> list[Variant]:
    known = {v.name: v for v in stage1_variants()}
    found = [known.get(name) or queued_variant(name) for name in names]
    return [v for v in found if v is not None]


@dataclass
class Runner:
    """One variant's steps, on a stage that is started afresh when a backlog is left over."""

    args: argparse.Namespace
    variant: Variant
    tmp: Path
    stacks: list[Stack] = field(default_factory=list)

    def fresh_stack(self) -> Stack:
        if self.stacks:
            self.stacks[-1].stop()
        folder = self.tmp / f"stack-{len(self.stacks) + 1}"
        self.stacks.append(Stack(self.variant.stage, folder, workers=self.variant.workers))
        self.stacks[-1].start()
        return self.stacks[-1]

    def run(self) -> list[steps.Step]:
        stack = self.fresh_stack()
        steps.say(f"{self.variant.name}: stage {self.variant.stage} up on {stack.url}")
        done = [steps.run_step(self.args, self.variant, stack, "idle", 0.0)]
        idle_p95 = done[0].prober.get("p95", 0.0)
        for load, rates in self.plan():
            in_a_row = 0
            for rate in rates:
                step = steps.run_step(self.args, self.variant, stack, load, rate)
                done.append(step)
                if not step.drained:  # its backlog would spill into the next step
                    stack = self.fresh_stack()
                in_a_row = in_a_row + 1 if knee.past_both_bars(asdict(step), idle_p95) else 0
                if in_a_row == PAST_BOTH_BARS_STEPS and not self.args.all_steps:
                    if rate < max(rates):
                        loaded = [asdict(s) for s in done if s.load == load]
                        steps.say(knee.skipping(self.variant.name, load, loaded, idle_p95))
                    break
        return done

    def plan(self) -> list[tuple[str, list[float]]]:
        loads = {"cpu": self.args.cpu_rates, "io": self.args.io_rates if self.variant.io else []}
        return [(load, loads[load]) for load in self.args.loads if loads[load]]

    def stop(self, out: Path) -> None:
        if self.stacks:
            self.stacks[-1].stop()
        for log in self.tmp.glob("stack-*/*.log"):  # keep the servers' logs with the results
            shutil.copy(log, out / f"{log.parent.name}-{log.name}")


def rates(text: str) -> list[float]:
    return sorted({float(value) for value in text.split(",") if value.strip()})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default = ",".join(v.name for v in default_variants())
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--step-seconds", type=float, default=10.0, help="seconds per step")
    parser.add_argument("--variants", default=default,
                        help=f"default {default}; also stageN-wK (K workers)")  # fmt: skip
    parser.add_argument("--cpu-rates", type=rates, default=rates(CPU_RATES),
                        help=f"crunch jobs/s, one step each (default {CPU_RATES})")  # fmt: skip
    parser.add_argument("--io-rates", type=rates, default=rates(IO_RATES),
                        help=f"wait jobs/s, one step each (default {IO_RATES})")  # fmt: skip
    parser.add_argument("--loads", default="cpu,io", help="which steps after idle: cpu, io")
    parser.add_argument("--all-steps", action="store_true",
                        help="run the rates above those past both bars too")  # fmt: skip
    parser.add_argument("--prober-rate", type=float, default=10.0, help="GET /ping per second")
    parser.add_argument("--crunch-ms", type=int, default=200)
    parser.add_argument("--wait-seconds", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: loadtests/results/<UTC timestamp>")  # fmt: skip
    parser.add_argument("--publish", nargs="?", type=Path, const=DOCS_RESULTS, default=None,
                        metavar="DIR", help="also write summary.md and the charts to DIR, "
                        "by default docs/results/")  # fmt: skip
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    args.variants = variants_named(names)
    if unknown := set(names) - {v.name for v in args.variants}:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {default}, stageN-wK")
    args.loads = [load for load in args.loads.split(",") if load]
    if unknown := set(args.loads) - set(knee.LOADS):
        parser.error(f"unknown load(s) {sorted(unknown)}; choose from {list(knee.LOADS)}")
    if args.out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        args.out = ROOT / "loadtests" / "results" / stamp
    return args


def settings(args: argparse.Namespace) -> dict[str, object]:
    skip = ("out", "publish", "variants")
    return {key: value for key, value in vars(args).items() if key not in skip}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    machine, started, done = report.machine(), time.monotonic(), []
    steps.say(f"results in {args.out}; {steps.estimate(args)}")
    for variant in args.variants:
        (args.out / variant.name).mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"loadtest-{variant.name}-") as tmp:
            runner = Runner(args, variant, Path(tmp))
            try:
                done += runner.run()
            finally:
                runner.stop(args.out / variant.name)
    machine["load_average_end"] = report.load_average()
    defaults = parse_args(["--out", str(args.out)])  # the reference run: `make loadtest` as is
    machine["reference_settings"] = settings(args) == settings(defaults) and args.variants == (
        defaults.variants
    )
    machine["minutes"] = round((time.monotonic() - started) / 60, 1)
    results = {"machine": machine, "settings": settings(args),
               "variants": [asdict(v) for v in args.variants],
               "steps": [asdict(step) for step in done]}  # fmt: skip
    results["knees"] = knee.knees(results["steps"])
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    summary = report.summary(results)
    for name, draw in CHARTS.items():
        draw(results, args.out / name)
    images = "".join(f"![{name}]({name})\n\n" for name in CHARTS)
    (args.out / "summary.md").write_text(f"# Load-test steps\n\n{images}{summary}")
    steps.say(f"wrote {args.out / 'summary.md'} after {machine['minutes']} min")
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        (args.publish / "summary.md").write_text(summary)
        for name in CHARTS:
            shutil.copy(args.out / name, args.publish / name)
        steps.say(f"published to {args.publish}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
