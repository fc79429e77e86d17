"""Stage 4: fetch(url) retries what can succeed later, and only that, within bounds.

The SSRF guard has its own module: tests/test_stage4_ssrf.py.
"""

import gzip
import hashlib
import itertools
import tracemalloc
import zlib
from datetime import datetime, timedelta

import pytest

from tests.helpers import enqueue
from tests.httpserver import Reply, ScriptedServer, fetch_settings

pytestmark = pytest.mark.since_stage(4)


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def fetch_env(stage, settings_env, monkeypatch):
    fetch_settings(monkeypatch, stage, allowlist=["127.0.0.1/32"])


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
    url = server.script("/slow", Reply(200, delay_s=3.0))  # over FETCH_TIMEOUT_S
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


def test_a_redirect_within_allowed_hosts_is_followed(fetch_env, client, drain, server):
    server.script("/target", Reply(200, body=b"there"))
    url = server.script("/hop", Reply(301, headers={"Location": "/target"}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["result"]["url"].endswith("/target")


WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}  # zlib's names for each


def compressed_zeros(size: int, encoding: str) -> bytes:
    """`size` zero bytes, compressed about a thousand to one: a "zip bomb"."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, WBITS[encoding])
    mebibyte = bytes(1024 * 1024)
    chunks = [compressor.compress(mebibyte) for _ in range(size // len(mebibyte))]
    return b"".join([*chunks, compressor.flush()])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_response_is_capped_as_it_is_decoded_not_after(
    fetch_env, client, drain, server, monkeypatch, stage, encoding
):
    cap = 1024 * 1024
    monkeypatch.setenv("FETCH_MAX_BYTES", str(cap))
    stage.module("config").get_settings.cache_clear()
    bomb = compressed_zeros(128 * cap, encoding)  # 128 MiB of zeros in about 128 KB
    url = server.script("/bomb", Reply(200, body=bomb, headers={"Content-Encoding": encoding}))
    job_id = enqueue(client, "fetch", {"url": url})
    tracemalloc.start()
    try:
        drain()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert f"over {cap} bytes" in job["error"]
    assert job["attempts"] == 1
    # About 2-4 MiB here. httpx's own decoding expands each network read whole: 140 MiB.
    assert peak < 8 * cap, f"the worker held {peak / cap:.0f} MiB for a {cap // 1024} KiB cap"


def test_a_compressed_response_under_the_cap_is_decoded(fetch_env, client, drain, server):
    body = b"hello " * 1000
    gzipped = server.script(
        "/gz", Reply(200, body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
    )
    job_id = enqueue(client, "fetch", {"url": gzipped})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["result"]["bytes"] == len(body)
    assert job["result"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert server.request_headers["/gz"][0]["Accept-Encoding"] == "identity"


def test_an_unknown_content_encoding_fails_without_retrying(fetch_env, client, drain, server):
    url = server.script("/br", Reply(200, body=b"\x00" * 10, headers={"Content-Encoding": "br"}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert "Content-Encoding 'br'" in job["error"]
    assert job["attempts"] == 1


@pytest.mark.parametrize(
    "retry_after",
    [
        "²",  # str.isdigit() says yes; float() says no
        "٣".encode().decode("latin-1"),  # an Arabic-Indic 3, sent as UTF-8
        "-5",
        "1.5",
        "0x10",
        "soon",
        "",
        "Mon, 99 Foo 2024 25:61:61 GMT",
        "Wed, 21 Oct 2015 07:28:00 -0000",  # a date without a usable zone
    ],
)
def test_an_unparsable_retry_after_is_ignored_and_the_usual_backoff_applies(
    fetch_env, client, drain, server, retry_after
):
    url = server.script("/busy", Reply(503, headers={"Retry-After": retry_after}), Reply(200))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["attempts"] == 2
    first, second = server.hits["/busy"]
    assert second - first < 5  # the backoff (at most 0.05 s here), not a misread header


@pytest.mark.parametrize("retry_after", ["86400", "9" * 400, "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_beyond_the_limit_fails_the_job_at_once(
    fetch_env, client, drain, server, retry_after
):
    url = server.script("/later", Reply(429, headers={"Retry-After": retry_after}), Reply(200))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert "too long" in job["error"]
    assert len(server.hits["/later"]) == 1
