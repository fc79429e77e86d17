"""Stage 4: POST /jobs/{id}/retry makes one new job for a failed or cancelled one, however
many times (or from how many tabs) it is asked; and the page's actions, retry and cancel,
cannot be made from another site's page."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa

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


def rewrite_row(stage, job_id: str, **values) -> None:
    """Change a job's row behind the API's back: a row an older version of the API wrote."""
    engine = sa.create_engine(stage.module("config").get_settings().database_url)
    columns = [sa.column(name, sa.JSON if name == "args" else sa.String) for name in values]
    jobs = sa.table("jobs", sa.column("job_id"), *columns)
    with engine.begin() as connection:
        connection.execute(jobs.update().where(jobs.c.job_id == job_id).values(**values))
    engine.dispose()


def cancelled_job(client, task: str, body: dict) -> str:
    job_id = enqueue(client, task, body, delay_seconds=60)
    assert client.delete(f"/jobs/{job_id}").status_code == 200
    return job_id


def test_a_retry_is_listed_as_retried_by_in_get_jobs(client, drain):
    old = failed_job(client, drain)
    new_id = client.post(f"/jobs/{old}/retry").json()["job_id"]
    listed = {row["job_id"]: row for row in client.get("/jobs").json()["jobs"]}
    assert listed[old]["retried_by"] == new_id
    assert listed[new_id]["retry_of"] == old


def test_a_queued_retry_that_redis_lost_is_sent_again_by_the_next_click(client, drain, raw_redis):
    old = failed_job(client, drain)
    new_id = client.post(f"/jobs/{old}/retry").json()["job_id"]
    # What an API that crashed between the row and the enqueue leaves: a row, nothing in Redis.
    raw_redis.delete(f"arq:job:{new_id}")
    raw_redis.zrem("arq:queue", new_id)

    again = client.post(f"/jobs/{old}/retry")
    assert again.status_code == 202, again.text
    assert again.json()["job_id"] == new_id  # the same retry, sent again: still one new job
    drain()
    assert status(client, new_id) == "failed"  # it ran (1 / 0 fails again)
    assert job(client, new_id)["attempts"] == 1


def test_a_retry_checks_the_old_arguments_as_the_tasks_route_does(stage, client):
    # Rows an older API wrote: arguments today's route refuses, a task that is gone, a URL
    # the SSRF guard refuses. Each is refused with a JSON reason, and nothing is made.
    too_long = cancelled_job(client, "wait", {"seconds": 1})
    rewrite_row(stage, too_long, args={"seconds": 9999})
    gone = cancelled_job(client, "add", ADD)
    rewrite_row(stage, gone, function="gone_task")
    loopback = cancelled_job(client, "add", ADD)
    rewrite_row(stage, loopback, function="fetch", args={"url": "http://127.0.0.1:1/"})

    refused = {old: client.post(f"/jobs/{old}/retry") for old in (too_long, gone, loopback)}

    assert refused[too_long].status_code == 422, refused[too_long].text
    assert refused[gone].status_code == 409, refused[gone].text
    assert "gone_task" in refused[gone].json()["detail"]
    assert refused[loopback].status_code == 422, refused[loopback].text
    assert "URL refused" in str(refused[loopback].json()["detail"])
    assert all(job(client, job_id)["retried_by"] is None for job_id in refused)
    assert len(client.get("/jobs").json()["jobs"]) == 3


def test_bulk_retry_refuses_a_function_that_is_not_a_task(client):
    for function in ["nope", "a\u0000b", ""]:
        response = client.post("/jobs/retry", json={"function": function})
        assert response.status_code == 422, (function, response.text)


def test_bulk_retries_from_two_tabs_at_once_claim_each_job_once(app, client, drain):
    failed = [enqueue(client, "divide", {"x": n, "y": 0}) for n in range(6)]
    drain()
    with serving(app) as url, ThreadPoolExecutor(2) as pool:

        def bulk(_: int) -> list[str]:
            response = httpx.post(f"{url}/jobs/retry", json={}, timeout=30)
            assert response.status_code == 202, response.text
            return [made["retry_of"] for made in response.json()["retried"]]

        claimed = [old for answer in pool.map(bulk, range(2)) for old in answer]
        listed = httpx.get(f"{url}/jobs", params={"function": "divide"}).json()["jobs"]
    assert sorted(claimed) == sorted(failed)  # each once, by one tab or the other
    assert len(listed) == 12


def test_bulk_retry_lists_a_failed_job_whose_arguments_are_refused_today(stage, client, drain):
    legacy = failed_job(client, drain)
    rewrite_row(stage, legacy, args={"x": "1", "y": 0})  # "1" is not 1 (strict)
    answer = client.post("/jobs/retry", json={}).json()
    assert answer["retried"] == []
    [refused] = answer["refused"]
    assert refused["job_id"] == legacy
    assert "args.x" in refused["reason"]
