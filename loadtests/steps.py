"""One load step: a headless Locust process against a running stage, then its settling.

A step is the prober plus (unless idle) one submitter at one offered rate, for --step-seconds.
While it runs we sample the queue length once a second (stage 2+: the ARQ queue in the
stage's own Valkey); afterwards we wait for the accepted work to finish and read every job.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from arq.constants import default_queue_name

from devkit.stages import ROOT
from loadtests import measure
from loadtests.stack import Stack

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
USERS = {"idle": ["Prober"], "cpu": ["Prober", "CpuSubmitter"], "io": ["Prober", "IoSubmitter"]}
LOCUST_GRACE_S = 30.0  # Locust's start-up and stop on top of --step-seconds
QUEUE_SAMPLE_S = 1.0
# After a step, how long the accepted work may take to finish before the stage is started
# afresh instead: a queue far behind (1 s waits at 128/s) would take minutes to empty.
DRAIN_LIMIT_S = 10.0
# Stage 1 tasks run in the API and leave only a log line: once none has finished for a
# task's length plus this, the missing ones are not coming.
STAGE1_STALL_S = 3.0
# What a step costs beyond --step-seconds, measured: Locust's start and stop, the settling.
STEP_OVERHEAD_S = 5.0
STACK_START_S = 3.0


@dataclass(frozen=True)
class Variant:
    """What a step runs against: a stage, how many workers, which crunch task. The runner
    (compare.py) makes the list; a step only reads it."""

    name: str
    stage: int
    crunch_task: str
    where: str  # where the CPU work runs, for the report
    workers: int = 1
    io: bool = True  # stage1-def's I/O task is the same `async def wait` as stage1-async's


@dataclass
class Step:
    """What one step against one variant measured."""

    variant: str
    load: str  # idle, cpu or io
    rate: float  # offered jobs per second; 0 when idle
    queued: bool  # stage 2+: the work goes through the ARQ queue
    prober: dict[str, float] = field(default_factory=dict)  # ms percentiles, count, failed
    prober_from_sent: dict[str, float] = field(default_factory=dict)
    submit: dict[str, float] = field(default_factory=dict)  # Locust's stats for the POST
    failures: int = 0  # failed requests of any kind
    accepted: int = 0
    completed: int = 0
    job_failed: int = 0
    queue_wait_ms: dict[str, float] = field(default_factory=dict)
    turnaround_ms: dict[str, float] = field(default_factory=dict)
    growth: float | None = None  # see measure.growth
    queue_length: list[int] = field(default_factory=list)  # jobs queued or running, each second
    drained: bool = True  # all accepted work finished within DRAIN_LIMIT_S of the step's end
    load_before: float = 0.0
    # Cores in use during the step (out of os.cpu_count()): the stage's processes, Locust, and
    # everything else on the machine. On a small or shared machine this explains the numbers.
    cores: dict[str, float] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)  # Locust's failures.csv


def step_name(load: str, rate: float) -> str:
    return load if load == "idle" else f"{load}-{rate:g}"


def locust_command(args: argparse.Namespace, variant: Variant, url: str, load: str, rate: float,
                   prefix: Path) -> list[str]:  # fmt: skip
    users = USERS[load]
    offered = {"cpu": ["--cpu-rate", f"{rate:g}"], "io": ["--io-rate", f"{rate:g}"]}
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", url, "-u", str(len(users)), "-r", str(len(users)),
        "-t", f"{args.step_seconds:g}s", "--stop-timeout", "10", "--only-summary",
        "--loglevel", "WARNING", "--csv", str(prefix), "--html", f"{prefix}.html",
        "--record-dir", f"{prefix}-records", "--prober-rate", f"{args.prober_rate:g}",
        *offered.get(load, []), "--crunch-task", variant.crunch_task,
        "--crunch-ms", str(args.crunch_ms), "--wait-seconds", f"{args.wait_seconds:g}",
        *users,
    ]  # fmt: skip


def run_step(args: argparse.Namespace, variant: Variant, stack: Stack, load: str,
             rate: float) -> Step:  # fmt: skip
    prefix = args.out / variant.name / step_name(load, rate)
    shutil.rmtree(f"{prefix}-records", ignore_errors=True)
    step = Step(variant.name, load, rate, stack.has_worker)
    step.load_before = round(os.getloadavg()[0], 2)
    mark = stack.log_mark()
    meter = measure.CpuMeter(stack.pids())
    say(f"{variant.name}: {step_name(load, rate)} for {args.step_seconds:g} s")
    with Path(f"{prefix}-locust.log").open("wb") as log:
        locust = subprocess.Popen(
            locust_command(args, variant, stack.url, load, rate, prefix),
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip
        try:
            step.queue_length = watch(args, stack, locust, meter, Path(f"{prefix}-records"))
            step.cores = meter.cores(stack.pids())
        finally:
            if locust.poll() is None:
                locust.kill()
                locust.wait()
    if locust.returncode not in (0, 1):  # 1 = "there were failures", which we report
        raise RuntimeError(f"locust exited with {locust.returncode}; see {log.name}")
    read_locust(step, prefix)
    if load != "idle":
        accepted = measure.read_tsv(Path(f"{prefix}-records") / "accepted.tsv")
        step.accepted = len(accepted)
        settle(args, step, stack, accepted, mark)
    return step


def watch(args: argparse.Namespace, stack: Stack, locust: subprocess.Popen, meter: measure.CpuMeter,
          records: Path) -> list[int]:  # fmt: skip
    """Until Locust exits: sample its CPU, and the queue length each second of the load."""
    queue = redis.Redis.from_url(stack.valkey.url) if stack.valkey else None
    name = stack.env.get("QUEUE_NAME", default_queue_name)  # the stages' default is ARQ's
    first_probe, lengths = records / "prober.tsv", []
    deadline = time.monotonic() + args.step_seconds + LOCUST_GRACE_S
    started, next_sample = None, 0.0
    try:
        while locust.poll() is None and time.monotonic() < deadline:
            meter.sample_locust(locust.pid)
            now = time.monotonic()
            if started is None and first_probe.exists() and first_probe.stat().st_size:
                started = next_sample = now  # Locust is sending
            during_load = started is not None and now <= started + args.step_seconds
            if queue and during_load and now >= next_sample:
                lengths.append(int(queue.zcard(name)))
                next_sample += QUEUE_SAMPLE_S
            time.sleep(0.25)
    finally:
        if queue:
            queue.close()
    return lengths


def read_locust(step: Step, prefix: Path) -> None:
    samples = measure.read_tsv(Path(f"{prefix}-records") / "prober.tsv")
    step.prober = measure.prober_latency(samples, 1)
    # Diagnostic: the same requests timed from when they were actually sent.
    step.prober_from_sent = measure.prober_latency(samples, 2)
    stats = measure.read_locust_stats(prefix)
    step.submit = next((s for name, s in stats.items() if name.startswith("POST ")), {})
    step.failures = int(stats.get("Aggregated", {}).get("failures", 0))
    step.errors = measure.read_locust_errors(prefix)


def settle(args: argparse.Namespace, step: Step, stack: Stack, accepted: list[list[str]],
           mark: tuple[int, int]) -> None:  # fmt: skip
    """Wait for the step's accepted work to finish (up to DRAIN_LIMIT_S), then count it."""
    if stack.has_worker:
        queue = redis.Redis.from_url(stack.valkey.url) if stack.valkey else None
        name = stack.env.get("QUEUE_NAME", default_queue_name)
        if queue and not hopeless(args, step):
            measure.wait_until_settled(lambda: -queue.zcard(name), 0, DRAIN_LIMIT_S, DRAIN_LIMIT_S)
        if queue:
            queue.close()
        jobs = measure.job_states(stack.url, [job_id for _, job_id, _ in accepted])
        step.completed = sum(job["status"] == "complete" for job in jobs.values())
        step.job_failed = sum(job["status"] == "failed" for job in jobs.values())
        times = measure.job_times(list(jobs.values()))
        step.queue_wait_ms, step.turnaround_ms = times["queue_wait_ms"], times["turnaround_ms"]
        step.growth = times["growth"]
        step.drained = all(job["status"] in measure.TERMINAL for job in jobs.values())
        return
    names = {name for name, _, _ in accepted}

    def done() -> int:
        counts = stack.completions_since(mark)
        return sum(counts.get(name, 0) for name in names)

    stall = args.wait_seconds + STAGE1_STALL_S
    step.completed = measure.wait_until_settled(done, step.accepted, stall, DRAIN_LIMIT_S)
    step.drained = step.completed >= step.accepted


def hopeless(args: argparse.Namespace, step: Step) -> bool:
    """The backlog at the end of the load would take the workers longer than DRAIN_LIMIT_S
    to clear at the pace they kept during the step: then waiting is wasted time."""
    left = step.queue_length[-1] if step.queue_length else 0
    pace = max(step.accepted - left, 1) / args.step_seconds  # jobs done per second, roughly
    return left / pace > DRAIN_LIMIT_S


def estimate(args: argparse.Namespace) -> str:
    """The run's length before it starts, if no step is skipped: the user's first question."""
    count = 0
    for variant in args.variants:
        io = args.io_rates if variant.io and "io" in args.loads else []
        count += 1 + len(args.cpu_rates if "cpu" in args.loads else []) + len(io)
    seconds = count * (args.step_seconds + STEP_OVERHEAD_S) + len(args.variants) * STACK_START_S
    return f"{count} steps of {args.step_seconds:g} s, at most about {seconds / 60:.0f} min"


def say(line: str) -> None:
    print(f"loadtest | {line}", flush=True)
