"""The breaking point, named: at which offered rate each variant gives way.

Pure functions over the steps' numbers (results.json's `steps`), so the smoke test can check
them on made-up steps as well as on a real run.

- The prober's knee: the first step whose `GET /ping` p95 is over PROBER_TIMES_IDLE times the
  variant's own idle p95, and separately the first over PROBER_LIMIT_MS. A relative and an
  absolute bar: 10x of 3 ms is still fast, and 100 ms on a slow laptop may be its idle.
- The workers' knee (stage 2+): the first step whose jobs' turnaround keeps growing across the
  step (FALLS_BEHIND, in seconds of extra turnaround per second): arrivals outpace the workers.
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


def first_rate(steps: list[dict[str, Any]], over) -> float | None:
    """The lowest offered rate whose step satisfies `over`, or None."""
    return next((step["rate"] for step in sorted(steps, key=rate) if over(step)), None)


def rate(step: dict[str, Any]) -> float:
    return step["rate"]


def p95(step: dict[str, Any]) -> float:
    return step["prober"].get("p95", 0.0)


def broken(step: dict[str, Any], idle_p95: float) -> bool:
    """Past both bars: more load would only break it further (the runner skips the rest)."""
    return p95(step) > PROBER_TIMES_IDLE * idle_p95 and p95(step) > PROBER_LIMIT_MS


def load_knee(loaded: list[dict[str, Any]], idle_p95: float | None) -> dict[str, Any]:
    """One variant under one load: its knees (None: not reached) and the rates tried."""
    queued = all(step["queued"] for step in loaded)
    times_idle = first_rate(
        loaded, lambda s: idle_p95 is not None and p95(s) > PROBER_TIMES_IDLE * idle_p95
    )
    behind = first_rate(loaded, lambda s: (s.get("growth") or 0.0) > FALLS_BEHIND)
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


def keeps_up_to(knee: dict[str, Any]) -> float | None:
    """The highest rate tried below the workers' knee (all of them if there is none)."""
    below = [r for r in knee["rates"] if knee["falls_behind"] is None or r < knee["falls_behind"]]
    return max(below, default=None)
