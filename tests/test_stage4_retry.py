"""Stage 4: POST /jobs/{id}/retry makes one new job for a failed or cancelled one, however
many times (or from how many tabs) it is asked; and the page's actions, retry and cancel,
cannot be made from another site's page."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import enqueue, job, status
from tests.liveserver import serving

pytestmark = pytest.mark.since_stage(4)

ADD = {"x": 5, "y": 10}
AT_ONCE = 8  # retries of one job sent at the same moment, as from many tabs
# A plain HTML form on another site, posting to this API: what a browser sends with it.
FOREIGN_FORM = {
    "Origin": "http://elsewhere.example",
    "Sec-Fetch-Site": "cross-site",
    "Content-Type": "application/x-www-form-urlencoded",
}


def failed_job(client, drain) -> str:
    job_id = enqueue(client, "divide", {"x": 1, "y": 0})
    drain()
    assert status(client, job_id) == "failed"
    return job_id


def test_a_retry_is_a_new_job_linked_both_ways_that_runs(client, drain):
    cancelled = enqueue(client, "add", ADD, delay_seconds=60)
    assert client.delete(f"/jobs/{cancelled}").status_code == 200

    response = client.post(f"/jobs/{cancelled}/retry")
    assert response.status_code == 202, response.text
    new_id = response.json()["job_id"]
    assert new_id != cancelled
    assert response.headers["location"] == f"/jobs/{new_id}"
    drain()
    retried = job(client, new_id)
    assert (retried["status"], retried["result"], retried["args"]) == ("complete", 15, ADD)
    assert retried["retry_of"] == cancelled
    assert job(client, cancelled)["retried_by"] == new_id


def test_asking_again_gives_the_same_new_job_not_a_second_one(client, drain):
    old = failed_job(client, drain)
    answers = [client.post(f"/jobs/{old}/retry").json()["job_id"] for _ in range(3)]
    assert len(set(answers)) == 1
    assert len(client.get("/jobs", params={"function": "divide"}).json()["jobs"]) == 2


def test_retries_sent_at_once_from_many_tabs_make_one_job(app, client, drain):
    old = failed_job(client, drain)
    with serving(app) as url, ThreadPoolExecutor(AT_ONCE) as pool:

        def retry(_: int) -> httpx.Response:
            return httpx.post(f"{url}/jobs/{old}/retry", timeout=30)

        answers = list(pool.map(retry, range(AT_ONCE)))
        listed = httpx.get(f"{url}/jobs", params={"function": "divide"}).json()["jobs"]
    assert {answer.status_code for answer in answers} == {202}
    assert len({answer.json()["job_id"] for answer in answers}) == 1
    assert len(listed) == 2  # the old job and one retry


@pytest.mark.parametrize("schedule", [{}, {"delay_seconds": 60}], ids=["queued", "deferred"])
def test_a_job_that_has_not_finished_is_not_retried(client, schedule):
    job_id = enqueue(client, "add", ADD, **schedule)
    response = client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 409
    assert "only a failed or cancelled job" in response.json()["detail"]


def test_a_complete_job_is_not_retried_and_an_unknown_one_is_a_404(client, drain):
    done = enqueue(client, "add", ADD)
    drain()
    assert client.post(f"/jobs/{done}/retry").status_code == 409
    assert client.post("/jobs/nope/retry").status_code == 404


def test_a_form_on_another_site_can_neither_retry_nor_cancel(client, drain):
    old = failed_job(client, drain)
    waiting = enqueue(client, "add", ADD, delay_seconds=60)

    refused = [
        client.post(f"/jobs/{old}/retry", headers=FOREIGN_FORM, content="x=1"),
        client.post(f"/jobs/{old}/retry", headers={"Origin": "http://elsewhere.example"}),
        client.post(f"/jobs/{old}/retry", headers={"Sec-Fetch-Site": "cross-site"}),
        client.post(f"/jobs/{old}/retry", headers={"Content-Type": "text/plain"}, content="{}"),
        client.delete(f"/jobs/{waiting}", headers={"Sec-Fetch-Site": "cross-site"}),
        client.delete(f"/jobs/{waiting}", headers={"Origin": "null"}),
    ]

    assert [response.status_code for response in refused] == [403] * len(refused)
    assert all("Refused" in response.json()["detail"] for response in refused)
    assert job(client, old).get("retried_by") is None
    assert len(client.get("/jobs", params={"function": "divide"}).json()["jobs"]) == 1
    assert status(client, waiting) == "deferred"
    # The page itself (same origin, JSON) and a client with no browser headers get through.
    own = {"Host": "127.0.0.1", "Origin": "http://127.0.0.1", "Sec-Fetch-Site": "same-origin"}
    assert client.post(f"/jobs/{old}/retry", headers=own, json={}).status_code == 202
    assert client.delete(f"/jobs/{waiting}").status_code == 200


def test_bulk_retry_retries_the_failed_jobs_a_filter_selects_a_bounded_few_at_a_time(client, drain):
    failed = [enqueue(client, "divide", {"x": n, "y": 0}) for n in range(3)]
    enqueue(client, "add", ADD)
    drain()

    def bulk(**body):
        response = client.post("/jobs/retry", json=body)
        assert response.status_code == 202, response.text
        return response.json()

    assert bulk(function="add")["retried"] == []  # nothing of add failed
    first = bulk(function="divide", max_jobs=2)
    assert first["more"] is True
    assert [made["retry_of"] for made in first["retried"]] == failed[::-1][:2]  # newest first
    second = bulk(max_jobs=2)
    assert (second["more"], [made["retry_of"] for made in second["retried"]]) == (False, failed[:1])
    assert bulk()["retried"] == []  # each failed job has its retry: asking again makes none
    for bad in [{"max_jobs": 101}, {"max_jobs": True}, {"max_jobs": "2"}, {"functon": "add"}]:
        assert client.post("/jobs/retry", json=bad).status_code == 422, bad
    assert client.post("/jobs/retry", headers=FOREIGN_FORM, content="x=1").status_code == 403
    assert len(client.get("/jobs", params={"function": "divide"}).json()["jobs"]) == 6
