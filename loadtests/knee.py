"""The breaking point, named: at which offered rate each variant gives way.

Pure functions over the steps' numbers (results.json's `steps`), so the smoke test can check
them on made-up steps as well as on a real run.

One vocabulary, in the console, the summary and the charts alike:
- "breaks at": the prober's knee, the first step whose `GET /ping` p95 is over either bar:
  PROBER_TIMES_IDLE times the variant's own idle p95, or PROBER_LIMIT_MS. A relative and an
  absolute bar: 10x of 3 ms is still fast, and 100 ms on a slow laptop may be its idle.
- "past both bars": over both at once; after two such steps in a row the runner does not run
  the higher rates ("the rates above ... are not run").
- The workers' knee (stage 2+): the first step whose jobs' turnaround keeps growing across the
  step (FALLS_BEHIND, in seconds of extra turnaround per second), or that left more work than
  the workers could finish within the runner's drain limit: arrivals outpace the workers.
  Turnaround (enqueue to finish) rather than queue wait alone, because a worker starts up to
  MAX_JOBS jobs at once: CPU jobs then slow each other down inside the worker before any of
  them has to wait in the queue.
"""

from __future__ import annotations

from typing import Any

PROBER_TIMES_IDLE = 10
PROBER_LIMIT_MS = 100.0
FALLS_BEHIND = 0.1  # the turnaround grows by more than 1 s per 10 s of steady arrivals
LOADS = ("cpu", "io")
LOAD_TITLES = {"cpu": "CPU tasks", "io": "I/O tasks"}


def first_rate(steps: list[dict[str, Any]], over) -> float | None:
    """The lowest offered rate whose step satisfies `over`, or None."""
    return next((step["rate"] for step in sorted(steps, key=rate) if over(step)), None)


def rate(step: dict[str, Any]) -> float:
    return step["rate"]


def p95(step: dict[str, Any]) -> float:
    return step["prober"].get("p95", 0.0)


def past_both_bars(step: dict[str, Any], idle_p95: float) -> bool:
    """More load would only break it further (after two such steps in a row the runner does
    not run the higher rates; one could be a hiccup)."""
    return p95(step) > PROBER_TIMES_IDLE * idle_p95 and p95(step) > PROBER_LIMIT_MS


def falls_behind(step: dict[str, Any]) -> bool:
    return (step.get("growth") or 0.0) > FALLS_BEHIND or not step.get("drained", True)


def load_knee(loaded: list[dict[str, Any]], idle_p95: float | None) -> dict[str, Any]:
    """One variant under one load: its knees (None: not reached) and the rates tried."""
    queued = all(step["queued"] for step in loaded)
    times_idle = first_rate(
        loaded, lambda s: idle_p95 is not None and p95(s) > PROBER_TIMES_IDLE * idle_p95
    )
    behind = first_rate(loaded, falls_behind)
    return {
        "rates": sorted(rate(step) for step in loaded),
        "over_times_idle": times_idle,
        "over_limit": first_rate(loaded, lambda s: p95(s) > PROBER_LIMIT_MS),
        "falls_behind": behind if queued else None,
        "queued": queued,
    }


def knees(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: its idle p95, and per load the knees and the rates tried."""
    result: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(step["variant"] for step in steps):
        mine = [step for step in steps if step["variant"] == variant]
        idle = next((p95(step) for step in mine if step["load"] == "idle"), None)
        result[variant] = {"idle_p95": idle}
        for load in LOADS:
            if loaded := [step for step in mine if step["load"] == load]:
                result[variant][load] = load_knee(loaded, idle)
    return result


def breaks_at(knee: dict[str, Any]) -> float | None:
    """Where `/ping` breaks: the first rate over either bar (None: it never did)."""
    return min((r for r in (knee["over_times_idle"], knee["over_limit"]) if r is not None),
               default=None)  # fmt: skip


def skipping(variant: str, load: str, loaded: list[dict[str, Any]], idle_p95: float) -> str:
    """The runner's line when it stops a load early, in the summary's words."""
    last = sorted(loaded, key=rate)
    run = []  # the steps past both bars, at the end, in a row
    while last and past_both_bars(last[-1], idle_p95):
        run.insert(0, last.pop()["rate"])
    at = breaks_at(load_knee(loaded, idle_p95))
    rates = " and ".join(f"{r:g}/s" for r in run)
    return (f"{variant}: breaks at {at:g}/s of {LOAD_TITLES[load]}; past both bars at {rates}, "
            f"so the rates above {max(run):g}/s are not run")  # fmt: skip


def keeps_up_to(knee: dict[str, Any]) -> float | None:
    """The highest rate tried below the workers' knee (all of them if there is none)."""
    below = [r for r in knee["rates"] if knee["falls_behind"] is None or r < knee["falls_behind"]]
    return max(below, default=None)


# -- comparing two runs ----------------------------------------------------------------------
# A reference run is made twice; a knee that moves by more than one step between the two is
# noise to explain before publishing.  python -m loadtests.knee A/results.json B/results.json

KNEES = ("over_times_idle", "over_limit", "falls_behind")


def steps_apart(a: float | None, b: float | None, rates: list[float]) -> int:
    """How many steps of `rates` lie between two knees; None counts as past the last rate."""
    position = {None: len(rates), **{r: i for i, r in enumerate(rates)}}
    return abs(position.get(a, len(rates)) - position.get(b, len(rates)))


def compare_runs(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    lines, settings = [], first["settings"]
    for variant, loads in first["knees"].items():
        for load in LOADS:
            a, b = loads.get(load), second["knees"].get(variant, {}).get(load)
            if a is None or b is None:
                continue
            for name in KNEES:
                apart = steps_apart(a[name], b[name], settings[f"{load}_rates"])
                flag = "  <-- more than one step apart" if apart > 1 else ""
                lines.append(f"{variant:14} {load:3} {name:16} {a[name]!s:>6} {b[name]!s:>6}{flag}")
    return lines


def main(argv: list[str]) -> int:
    import json
    from pathlib import Path

    first, second = (json.loads(Path(path).read_text()) for path in argv)
    lines = compare_runs(first, second)
    print(f"{'variant':14} {'load':3} {'knee':16} {'run 1':>6} {'run 2':>6}", *lines, sep="\n")
    return 1 if any("<--" in line for line in lines) else 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
