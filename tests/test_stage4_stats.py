"""Stage 4: GET /stats, the jobs page's charts, counted from the ledger: jobs finished per
minute over the last hour, and how long they waited in the queue."""

import pytest

from tests.helpers import enqueue

pytestmark = pytest.mark.since_stage(4)


def test_the_charts_count_the_last_hours_jobs_by_outcome_and_their_waits(client, drain, app):
    for n in range(3):
        enqueue(client, "add", {"x": n, "y": 1})
    for _ in range(2):
        enqueue(client, "divide", {"x": 1, "y": 0})
    old = enqueue(client, "add", {"x": 0, "y": 0})
    drain()
    with app.state.ledger.db.engine.begin() as connection:  # two hours ago: off the chart
        connection.exec_driver_sql(
            "UPDATE jobs SET finish_time = datetime(finish_time, '-2 hours') WHERE job_id = ?",
            (old,),
        )

    chart = client.get("/stats").json()
    assert len(chart["minutes"]) == 60
    assert chart["minutes"] == sorted(chart["minutes"])
    assert (sum(chart["complete"]), sum(chart["failed"])) == (3, 2)
    waits = [wait for wait in chart["wait_p95_s"] if wait is not None]
    assert waits and all(wait >= 0 for wait in waits)
    p50 = [wait for wait in chart["wait_p50_s"] if wait is not None]
    assert all(low <= high for low, high in zip(p50, waits, strict=True))
