"""Stage 4's charts on the jobs page: jobs finished per minute over the last hour, by
outcome, and how long they waited in the queue (p50, p95), a point a minute.

`finished_since(jobs, since)` is the SQL: the hour's finished jobs, with plain comparisons
that read the same on SQLite and PostgreSQL; `chart(rows, since)` counts them (percentiles
by nearest rank). The page draws them with uPlot, vendored in jobkit/static/uplot.

A learner may skip this module: stage 4 uses it for `GET /stats`.
"""

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

CHART_MINUTES = 60  # the charts' span, a point a minute
MAX_CHART_ROWS = 100_000  # finished jobs read for the charts at most (the newest hour's)


class Chart(BaseModel):
    """Stage 4's charts: a point a minute over the last CHART_MINUTES."""

    minutes: list[int]  # each minute's start, Unix seconds
    complete: list[int]  # jobs that finished in that minute, by outcome
    failed: list[int]
    wait_p50_s: list[float | None]  # how long they had waited for a worker (None: no job)
    wait_p95_s: list[float | None]


def chart_start(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)


def finished_since(jobs: sa.Table, since: datetime) -> sa.Select[Any]:
    """The jobs that finished (complete or failed) since `since`, with their times."""
    due = [jobs.c.run_at] if "run_at" in jobs.c else []  # a deferred job waits from then
    columns = [jobs.c.status, jobs.c.enqueue_time, jobs.c.start_time, jobs.c.finish_time, *due]
    finished = jobs.c.status.in_(["complete", "failed"])
    return sa.select(*columns).where(jobs.c.finish_time >= since, finished).limit(MAX_CHART_ROWS)


def chart(rows: Iterable[Any], since: datetime) -> Chart:
    """The rows of finished_since, counted a minute at a time."""
    counts = {"complete": [0] * CHART_MINUTES, "failed": [0] * CHART_MINUTES}
    waits: list[list[float]] = [[] for _ in range(CHART_MINUTES)]
    for row in rows:
        minute = int((row["finish_time"] - since).total_seconds() // 60)
        if not 0 <= minute < CHART_MINUTES:
            continue
        counts[row["status"]][minute] += 1
        if row["start_time"] is not None:
            waited_from = max(row["enqueue_time"], row.get("run_at") or row["enqueue_time"])
            waits[minute].append(max(0.0, (row["start_time"] - waited_from).total_seconds()))
    start = int(since.timestamp())
    return Chart(
        minutes=[start + 60 * n for n in range(CHART_MINUTES)],
        complete=counts["complete"],
        failed=counts["failed"],
        wait_p50_s=[percentile(values, 50) for values in waits],
        wait_p95_s=[percentile(values, 95) for values in waits],
    )


def percentile(values: list[float], percent: int) -> float | None:
    """The nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percent // 100))  # ceil without floats
    return round(ordered[rank - 1], 3)
