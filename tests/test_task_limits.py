"""Stage 2+: a task refuses up front what it could not finish, and says why it failed."""

import pytest

from tests.helpers import enqueue, job


@pytest.mark.since_stage(2)
def test_a_division_that_overflows_fails_saying_the_result_is_not_finite(client, drain):
    # 1e12 / 1e-300 is inf: JSON has no inf, and without a check ARQ could only store its
    # opaque "unable to serialize result".
    job_id = enqueue(client, "divide", {"x": 1e12, "y": 1e-300})
    drain()
    failed = job(client, job_id)
    assert failed["status"] == "failed"
    assert failed["error"] == "OverflowError: 1000000000000.0 / 1e-300 is not a finite number"
