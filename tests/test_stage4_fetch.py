"""Stage 4: fetch(url) retries what can succeed later, and only that; the SSRF guard."""

import itertools
from datetime import datetime, timedelta

import pytest

from tests.helpers import enqueue
from tests.httpserver import Reply, ScriptedServer

pytestmark = pytest.mark.since_stage(4)


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def fetch_env(stage, settings_env, monkeypatch):
    """Fast backoff, short timeouts, and our own local server allowlisted."""
    monkeypatch.setenv("FETCH_ALLOWLIST", '["127.0.0.1/32"]')
    monkeypatch.setenv("FETCH_BASE_DELAY_S", "0.01")
    monkeypatch.setenv("FETCH_MAX_DELAY_S", "0.05")
    monkeypatch.setenv("FETCH_TIMEOUT_S", "0.2")
    monkeypatch.setenv("FETCH_MAX_TRIES", "3")
    stage.module("config").get_settings.cache_clear()


def test_a_fetch_that_fails_twice_then_succeeds_completes_on_the_third_attempt(
    fetch_env, client, drain, server
):
    url = server.script("/flaky", Reply(503), Reply(502), Reply(200, body=b"hello"))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["attempts"] == 3
    assert job["result"]["status"] == 200
    assert job["result"]["bytes"] == 5
    assert len(server.hits["/flaky"]) == 3
    log = job["attempt_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3]
    assert [a["outcome"] for a in log] == ["retrying", "retrying", "complete"]
    assert [a["error"] for a in log] == ["HTTP 503", "HTTP 502", None]
    for earlier, later in itertools.pairwise(log):
        assert earlier["start_time"] <= earlier["finish_time"]
        due = datetime.fromisoformat(earlier["next_try_at"])
        # Never before it was due (ARQ keeps due times in whole milliseconds: 2 ms of slack).
        assert datetime.fromisoformat(later["start_time"]) >= due - timedelta(milliseconds=2)


def test_fetch_may_try_more_often_than_arqs_default_cap_of_five(
    fetch_env, stage, client, drain, server, monkeypatch
):
    monkeypatch.setenv("FETCH_MAX_TRIES", "7")
    stage.module("config").get_settings.cache_clear()
    url = server.script("/bad", *[Reply(503)] * 6, Reply(200))
    job_id = enqueue(client, "fetch", {"url": url})
    drain(functions=stage.module("worker").task_functions())
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["attempts"] == 7


def test_a_429_retry_after_is_honoured(fetch_env, client, drain, server):
    url = server.script("/busy", Reply(429, headers={"Retry-After": "1"}), Reply(200))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "complete"
    first, second = server.hits["/busy"]
    assert second - first >= 1.0  # the backoff alone would have been <= 0.05 s


def test_a_404_is_not_retried(fetch_env, client, drain, server):
    url = server.script("/missing", Reply(404))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "HTTP 404" in job["error"] and "not retried" in job["error"]
    assert job["attempts"] == 1
    assert len(server.hits["/missing"]) == 1


def test_a_timeout_is_retried_up_to_the_limit_then_fails(fetch_env, client, drain, server):
    url = server.script("/slow", Reply(200, delay_s=1.0))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "ReadTimeout" in job["error"] and "gave up after 3 attempts" in job["error"]
    assert len(server.hits["/slow"]) == 3
    assert [a["outcome"] for a in job["attempt_log"]] == ["retrying", "retrying", "failed"]
    # The failed-job view: the history filtered on status.
    failed = client.get("/jobs", params={"status": "failed", "function": "fetch"}).json()
    assert [j["job_id"] for j in failed["jobs"]] == [job_id]
    assert "gave up" in failed["jobs"][0]["error"]


def test_a_response_over_the_size_limit_fails_without_retrying(
    fetch_env, client, drain, server, monkeypatch, stage
):
    monkeypatch.setenv("FETCH_MAX_BYTES", "10")
    stage.module("config").get_settings.cache_clear()
    url = server.script("/big", Reply(200, body=b"x" * 100))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "over 10 bytes" in job["error"]
    assert len(server.hits["/big"]) == 1


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/", "loopback"),
        ("http://localhost:9/", "loopback"),  # a name that resolves to loopback
        ("http://[::1]:9/", "loopback"),
        ("http://[::ffff:127.0.0.1]:9/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://100.100.100.200/", "cloud-metadata"),
        ("http://100.64.0.1/", "non-global"),  # carrier-grade NAT
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.org/", "only http and https"),
        ("http:///nohost", "no host"),
        ("http://example.org:99999/", "port"),
    ],
)
def test_unsafe_urls_are_refused_with_422_at_the_api(settings_env, client, raw_redis, url, why):
    response = client.post("/tasks/fetch", json={"url": url})
    assert response.status_code == 422, response.text
    assert why in response.json()["detail"][0]["msg"]
    assert raw_redis.zcard("arq:queue") == 0


def test_a_redirect_to_a_private_address_is_refused_by_the_worker(fetch_env, client, drain, server):
    url = server.script("/go", Reply(302, headers={"Location": "http://169.254.169.254/"}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "refused" in job["error"] and "169.254.169.254" in job["error"]


def test_a_redirect_within_allowed_hosts_is_followed(fetch_env, client, drain, server):
    server.script("/target", Reply(200, body=b"there"))
    url = server.script("/hop", Reply(301, headers={"Location": "/target"}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["result"]["url"].endswith("/target")
