"""`make loadtest`: the same offered load against every stage, one report.

    python -m loadtests.compare [--duration 60] [--variants stage1-async,stage2]
                                [--scenarios idle,cpu,io,crash] [--publish]

For each variant (stage 1 with its `async def` crunch, stage 1 with its `def` crunch_sync,
then every stage 2+ package on disk) it starts the stage on free ports with its own embedded
Valkey and data folder, then runs each scenario headless with Locust for --duration seconds:

- idle:  the prober alone (the baseline);
- cpu:   the prober + crunch jobs (~200 ms of pure-Python CPU each) at --cpu-rate;
- io:    the prober + wait jobs (1 s sleeps) at --io-rate: where BackgroundTasks is fine;
- crash: the prober + both submitters; halfway through, the API gets SIGKILL and is started
         again. Then: how many accepted tasks ever completed?

After each loaded scenario it waits for the accepted work to finish (stage 2+: every job id
reaches a final state via GET /jobs/{id}; stage 1: the API log's "done" lines), stops the
stage, and finally writes Locust's CSV and HTML per run, summary.md, results.json and
prober_latency.png into the results folder. --publish also copies the table and chart to
docs/results/ for the docs site.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from devkit.stages import ROOT, STAGES
from loadtests import report
from loadtests.stack import Stack

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
DOCS_RESULTS = ROOT / "docs" / "results"
SCENARIOS = {
    "idle": ["Prober"],
    "cpu": ["Prober", "CpuSubmitter"],
    "io": ["Prober", "IoSubmitter"],
    "crash": ["Prober", "CpuSubmitter", "IoSubmitter"],
}
LOCUST_GRACE_S = 30.0  # Locust's start-up and stop on top of --duration
DRAIN_STALL_S = 20.0  # give up waiting for accepted jobs once none finished for this long
# Stage 1 tasks are short and run in the API: once none has finished for a task's length plus
# this, the missing ones are lost (the crash scenario), not late.
STAGE1_STALL_S = 3.0
TERMINAL = {"complete", "failed", "cancelled"}


@dataclass(frozen=True)
class Variant:
    name: str
    stage: int
    crunch_task: str
    where: str  # where the CPU work runs, for the report


def all_variants() -> list[Variant]:
    variants = []
    for number in sorted(STAGES):
        if number == 1:
            variants += [
                Variant("stage1-async", 1, "crunch", "`async def` task, on the API's event loop"),
                Variant("stage1-def", 1, "crunch_sync", "`def` task, in the API's thread pool"),
            ]
        else:
            variants.append(Variant(f"stage{number}", number, "crunch", "ARQ worker process"))
    return variants


@dataclass
class Run:
    """What one scenario against one variant measured."""

    variant: str
    scenario: str
    prober: dict[str, float] = field(default_factory=dict)  # ms percentiles, count, failed
    prober_from_sent: dict[str, float] = field(default_factory=dict)
    requests: dict[str, dict[str, float]] = field(default_factory=dict)  # Locust's stats by name
    failures: int = 0
    accepted: int = 0
    completed: int = 0
    job_failed: int = 0
    queue_wait_ms: dict[str, float] = field(default_factory=dict)
    downtime_s: float | None = None
    load_before: float = 0.0
    # Cores in use during the run (out of os.cpu_count()): the stage's processes, Locust, and
    # everything else on the machine. On a small or shared machine this explains the numbers.
    cores: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)  # Locust's failures.csv


class CpuMeter:
    """CPU seconds used by the machine, by some processes, and by one more that may exit."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.wall = time.monotonic()
        self.machine = self._machine_busy()
        self.own = self._process_seconds(pids)
        self.locust = 0.0

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    @staticmethod
    def _process_seconds(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def sample_locust(self, pid: int) -> None:
        """Locust's CPU so far; call it often, since the last sample before it exits counts."""
        self.locust = self._process_seconds([pid]) or self.locust

    def cores(self, pids: list[int]) -> dict[str, float]:
        wall = time.monotonic() - self.wall
        machine = (self._machine_busy() - self.machine) / wall
        stage = (self._process_seconds(pids) - self.own) / wall if pids == self.pids else None
        locust = self.locust / wall
        result = {"machine": machine, "locust": locust}
        if stage is not None:  # not after a crash: the API that was measured is gone
            result |= {"stage": stage, "other": machine - stage - locust}
        return {key: round(value, 2) for key, value in result.items()}


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles in ms, plus the sample count."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": rank(1.0),
            "count": len(ordered)}  # fmt: skip


def read_tsv(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split("\t") for line in path.read_text().splitlines() if line]


def read_locust_stats(csv_prefix: Path) -> dict[str, dict[str, float]]:
    path = Path(f"{csv_prefix}_stats.csv")
    if not path.exists():
        return {}
    stats = {}
    with path.open() as file:
        for row in csv.DictReader(file):
            name = row["Name"] if row["Type"] in ("", "None") else f"{row['Type']} {row['Name']}"
            stats[name] = {
                "count": int(row["Request Count"]),
                "failures": int(row["Failure Count"]),
                "p50": float(row["50%"]) if row["50%"] != "N/A" else 0.0,
                "p95": float(row["95%"]) if row["95%"] != "N/A" else 0.0,
            }
    return stats


def wait_until_settled(progress, target: int, stall_s: float) -> int:
    """Poll `progress()` until it reaches `target` or stops moving for `stall_s` seconds."""
    value, last_change = progress(), time.monotonic()
    while value < target and time.monotonic() - last_change < stall_s:
        time.sleep(0.2)
        new = progress()
        if new != value:
            value, last_change = new, time.monotonic()
    return value


def follow_jobs(url: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Stage 2+: every accepted job's final state (or its last state, if it never got there)."""
    final: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=5) as client:

        def progress() -> int:
            for job_id in job_ids:
                if job_id in final:
                    continue
                try:
                    response = client.get(f"/jobs/{job_id}")
                except httpx.HTTPError:
                    continue
                job = response.json() if response.status_code == 200 else {"status": "unknown"}
                last[job_id] = job
                if job["status"] in TERMINAL:
                    final[job_id] = job
            return len(final)

        wait_until_settled(progress, len(job_ids), DRAIN_STALL_S)
    unknown = {"status": "unknown"}
    return {job_id: final.get(job_id) or last.get(job_id, unknown) for job_id in job_ids}


def queue_wait_ms(job: dict[str, Any]) -> float | None:
    if not (job.get("start_time") and job.get("enqueue_time")):
        return None
    started = datetime.fromisoformat(job["start_time"])
    return (started - datetime.fromisoformat(job["enqueue_time"])).total_seconds() * 1000


def locust_command(args: argparse.Namespace, variant: Variant, stack: Stack, classes: list[str],
                   folder: Path, name: str) -> list[str]:  # fmt: skip
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", stack.url, "-u", str(len(classes)), "-r", str(len(classes)),
        "-t", f"{args.duration}s", "--stop-timeout", "10", "--only-summary",
        "--loglevel", "WARNING",
        "--csv", str(folder / name), "--html", str(folder / f"{name}.html"),
        "--record-dir", str(folder / f"{name}-records"),
        "--prober-rate", str(args.prober_rate), "--cpu-rate", str(args.cpu_rate),
        "--io-rate", str(args.io_rate), "--crunch-task", variant.crunch_task,
        "--crunch-ms", str(args.crunch_ms), "--wait-seconds", str(args.wait_seconds),
        *classes,
    ]  # fmt: skip


def run_scenario(args: argparse.Namespace, variant: Variant, stack: Stack, scenario: str,
                 out: Path) -> Run:  # fmt: skip
    classes = list(SCENARIOS[scenario])
    if stack.has_worker and scenario != "idle":
        classes.append("Checker")
    folder = out / variant.name
    folder.mkdir(parents=True, exist_ok=True)
    records = folder / f"{scenario}-records"
    shutil.rmtree(records, ignore_errors=True)
    run = Run(variant.name, scenario, load_before=round(os.getloadavg()[0], 2))
    mark = stack.log_mark()
    meter = CpuMeter(stack.pids())
    say(f"{variant.name}: {scenario} for {args.duration} s ({', '.join(classes)})")
    with (folder / f"{scenario}-locust.log").open("wb") as log:
        locust = subprocess.Popen(
            locust_command(args, variant, stack, classes, folder, scenario),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip
        try:
            if scenario == "crash":
                run.downtime_s = crash_midway(args, stack, locust, records / "prober.tsv")
            deadline = time.monotonic() + args.duration + LOCUST_GRACE_S
            while locust.poll() is None and time.monotonic() < deadline:
                meter.sample_locust(locust.pid)
                time.sleep(0.25)
            run.cores = meter.cores(stack.pids())
        finally:
            if locust.poll() is None:
                locust.kill()
                locust.wait()
    if locust.returncode not in (0, 1):  # 1 = "there were failures", which we report
        raise RuntimeError(f"locust exited with {locust.returncode}; see {log.name}")

    samples = read_tsv(records / "prober.tsv")
    run.prober = percentiles([float(ms) for _, ms, _, ok in samples if ok == "1"])
    run.prober["failed"] = sum(ok != "1" for *_, ok in samples)
    # Diagnostic: the same requests timed from when they were actually sent.
    run.prober_from_sent = percentiles([float(ms) for _, _, ms, ok in samples if ok == "1"])
    run.requests = read_locust_stats(folder / scenario)
    run.failures = int(run.requests.get("Aggregated", {}).get("failures", 0))
    if (failures := Path(f"{folder / scenario}_failures.csv")).exists():
        with failures.open() as file:
            run.errors = list(csv.DictReader(file))
    accepted = read_tsv(records / "accepted.tsv")
    run.accepted = len(accepted)
    if scenario == "idle":
        return run
    if stack.has_worker:
        jobs = follow_jobs(stack.url, [job_id for _, job_id, _ in accepted])
        run.completed = sum(job["status"] == "complete" for job in jobs.values())
        run.job_failed = sum(job["status"] == "failed" for job in jobs.values())
        waits = [w for job in jobs.values() if (w := queue_wait_ms(job)) is not None]
        run.queue_wait_ms = percentiles(waits)
    else:
        names = {name for name, _, _ in accepted}

        def done() -> int:
            counts = stack.completions_since(mark)
            return sum(counts.get(name, 0) for name in names)

        run.completed = wait_until_settled(done, run.accepted, args.wait_seconds + STAGE1_STALL_S)
    return run


def crash_midway(args: argparse.Namespace, stack: Stack, locust: subprocess.Popen,
                 first_probe: Path) -> float:  # fmt: skip
    """SIGKILL the API halfway through the run and start it again; returns the downtime."""
    deadline = time.monotonic() + LOCUST_GRACE_S
    while not (first_probe.exists() and first_probe.stat().st_size):  # Locust is sending
        if locust.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("locust did not start sending requests")
        time.sleep(0.05)
    time.sleep(args.duration / 2)
    started = time.monotonic()
    say(f"  SIGKILL the API (pid {stack.api.pid if stack.api else '?'}) and start it again")
    stack.kill_api()
    stack.start_api()
    return round(time.monotonic() - started, 2)


def say(line: str) -> None:
    print(f"loadtest | {line}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    names = [variant.name for variant in all_variants()]
    parser = argparse.ArgumentParser(prog="python -m loadtests.compare",
                                     description=__doc__.split("\n")[0])  # fmt: skip
    parser.add_argument("--duration", type=int, default=60, help="seconds per scenario")
    parser.add_argument("--variants", default=",".join(names), help=f"from {','.join(names)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="idle is always run")
    parser.add_argument("--prober-rate", type=float, default=10.0, help="GET /ping per second")
    parser.add_argument("--cpu-rate", type=float, default=2.0, help="crunch jobs per second")
    parser.add_argument("--io-rate", type=float, default=2.0, help="wait jobs per second")
    parser.add_argument("--crunch-ms", type=int, default=200)
    parser.add_argument("--wait-seconds", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: loadtests/results/<UTC timestamp>")  # fmt: skip
    parser.add_argument("--publish", nargs="?", type=Path, const=DOCS_RESULTS, default=None,
                        metavar="DIR", help="also write summary.md (the tables) and "
                        "prober_latency.png to DIR, by default docs/results/")  # fmt: skip
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    args.scenarios = ["idle", *(s for s in args.scenarios.split(",") if s and s != "idle")]
    if unknown := set(args.variants) - set(names):
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {names}")
    if unknown := set(args.scenarios) - set(SCENARIOS):
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {list(SCENARIOS)}")
    if args.out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        args.out = ROOT / "loadtests" / "results" / stamp
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = [v for v in all_variants() if v.name in args.variants]
    machine = report.machine()
    runs: list[Run] = []
    say(f"results in {args.out}")
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix=f"loadtest-{variant.name}-") as tmp:
            with Stack(variant.stage, Path(tmp)) as stack:
                say(f"{variant.name}: stage {variant.stage} up on {stack.url}")
                for scenario in args.scenarios:
                    runs.append(run_scenario(args, variant, stack, scenario, args.out))
            for log in Path(tmp).glob("*.log"):  # keep the servers' logs with the results
                shutil.copy(log, args.out / variant.name / log.name)
    machine["load_average_end"] = report.load_average()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "publish")}
    (args.out / "results.json").write_text(json.dumps(
        {"machine": machine, "settings": settings, "variants": [asdict(v) for v in variants],
         "runs": [asdict(run) for run in runs]}, indent=2, default=str))  # fmt: skip
    table = report.summary(runs, variants, machine, settings)
    report.chart(runs, variants, args.out / "prober_latency.png")
    (args.out / "summary.md").write_text(
        "# Load-test comparison\n\n![Prober latency per variant](prober_latency.png)\n\n" + table
    )
    say(f"wrote {args.out / 'summary.md'}")
    if args.publish:
        args.publish.mkdir(parents=True, exist_ok=True)
        (args.publish / "summary.md").write_text(table)
        shutil.copy(args.out / "prober_latency.png", args.publish / "prober_latency.png")
        say(f"published to {args.publish}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
