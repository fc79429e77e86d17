"""Stage 4: the SSRF guard. fetch(url) reaches public addresses only, and only ones it checked.

The resolver is the attacker in some of these tests, so they replace `socket.getaddrinfo`
(every DNS lookup in the process goes through it) for one made-up name each, and pass every
other name to the real one.
"""

import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import jobkit.ssrf
from tests.helpers import enqueue, poll
from tests.httpserver import Reply, ScriptedServer, fetch_settings
from tests.tools import require

pytestmark = pytest.mark.since_stage(4)

REAL_GETADDRINFO = socket.getaddrinfo


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server(stage, settings_env, monkeypatch):
    """A local HTTP server, its loopback address let through the guard (fast retries too)."""
    fetch_settings(monkeypatch, stage, allowlist=["127.0.0.1/32"])
    with ScriptedServer() as scripted:
        yield scripted


@pytest.fixture
def twin_env(stage, settings_env, monkeypatch):
    # Not 127.0.0.1. Nothing listens on 127.0.0.3: an address that cannot be reached.
    fetch_settings(monkeypatch, stage, allowlist=["127.0.0.2/32", "127.0.0.3/32"])


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/", "loopback"),
        ("http://localhost:9/", "loopback"),  # a name that resolves to loopback
        ("http://[::1]:9/", "loopback"),
        ("http://[::ffff:127.0.0.1]:9/", "the IPv4-mapped form of 127.0.0.1, a loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://100.100.100.200/", "cloud-metadata"),
        ("http://100.64.0.1/", "non-global"),  # carrier-grade NAT
        ("http://0.0.0.0/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        # IPv6 forms that carry an IPv4 address: judged by the address they carry.
        ("http://[2002:7f00:1::]/", "the 6to4 form of 127.0.0.1, a loopback"),
        ("http://[2002:a00:1::]/", "the 6to4 form of 10.0.0.1, a private"),
        ("http://[2002:a9fe:a9fe::]/", "6to4 form of 169.254.169.254, a cloud-metadata"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/", "the Teredo form of 127.0.0.1"),
        ("http://[64:ff9b::7f00:1]/", "the NAT64 form of 127.0.0.1, a loopback"),
        ("http://[64:ff9b::a9fe:a9fe]/", "NAT64 form of 169.254.169.254"),
        ("http://[::7f00:1]/", "reserved"),  # IPv4-compatible, deprecated since 2006
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


@pytest.mark.parametrize("url", ["http://[2002:808:808::]/", "http://[64:ff9b::808:808]/"])
def test_6to4_and_nat64_addresses_of_a_public_ipv4_address_are_accepted(settings_env, client, url):
    enqueue(client, "fetch", {"url": url})  # 8.8.8.8, carried in IPv6


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",  # urlsplit raised ValueError here: a 500
        "http://[1.1.1.1]/",
        "http://[::1",
        "http://[127.0.0.1]:9/",
        "http://[v1.fe]/",
        "http://[fe80::1%eth0/",
        "http://1.1.1.1]/",
        "http://127.0.0.1:9:9/",
        "http://127.0.0.1:-1/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:port/",
        "http://:9/",
        "http:127.0.0.1:9/",
        "https:",
        "",
    ],
)
def test_malformed_urls_are_a_422_not_a_500(server, client, raw_redis, url):
    response = client.post("/tasks/fetch", json={"url": url})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "url"]
    assert raw_redis.zcard("arq:queue") == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a\tb",  # was a 202, then failed in the worker
        "http://127.0.0.1:9/a\x00b",
        "http://127.0.0.1:9/\r\nX-Injected: 1",
        "http://127.0.0.1:9/a b",
        " http://127.0.0.1:9/",
        "http://127.0.0.1:9/\x7f",
        "http://127.0.0.1:9/\u200b",  # zero-width space
        "http://127.0.0.1:9/\u2028",  # line separator
        "http://127.0.0.1:9/\u00a0",  # no-break space
    ],
)
def test_urls_with_whitespace_or_control_characters_are_refused_up_front(
    server, client, raw_redis, url
):
    response = client.post("/tasks/fetch", json={"url": url})
    assert response.status_code == 422, response.text
    assert "whitespace or a control character" in response.json()["detail"][0]["msg"]
    assert raw_redis.zcard("arq:queue") == 0


NOT_IDNA = ["http://xn--/", "http://xn--zz.example/", "http://xn--ls8h.example/"]


@pytest.mark.parametrize("url", NOT_IDNA)
def test_a_host_that_is_not_a_valid_idna_name_is_a_422_malformed_url(
    settings_env, client, raw_redis, url
):
    # "xn--" names are IDNA's encoding of non-ASCII names; httpx decodes them and raised
    # idna.IDNAError for one that does not decode: a plain-text 500.
    response = client.post("/tasks/fetch", json={"url": url})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "url"]
    assert "malformed URL" in error["msg"] and "IDNA" in error["msg"], error["msg"]
    assert raw_redis.zcard("arq:queue") == 0


def test_a_redirect_to_a_host_that_is_not_a_valid_idna_name_is_a_final_failure(
    server, client, drain
):
    url = server.script("/go", Reply(302, headers={"Location": NOT_IDNA[1]}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert job["error"].startswith("FetchFailed: bad redirect Location"), job["error"]
    assert "IDNA" in job["error"]
    assert job["attempts"] == 1
    assert len(server.hits["/go"]) == 1


def test_a_redirect_to_a_private_address_is_refused_by_the_worker(server, client, drain):
    url = server.script("/go", Reply(302, headers={"Location": "http://169.254.169.254/"}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed"
    assert "refused" in job["error"] and "169.254.169.254" in job["error"]


@pytest.mark.parametrize(
    "location", ["http://[::1", "http://[1.1.1.1]/", "http://127.0.0.1:99999/", "/a\tb"]
)
def test_a_malformed_redirect_is_a_final_failure_not_retried(server, client, drain, location):
    url = server.script("/go", Reply(302, headers={"Location": location}))
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert "redirect" in job["error"] and repr(location) in job["error"], job["error"]
    assert job["attempts"] == 1
    assert len(server.hits["/go"]) == 1


# --- DNS rebinding: the address checked is the address connected to ---------------------


@pytest.fixture
def twin_servers():
    """Two servers on one port: 127.0.0.2 (allow-listed, "safe"), 127.0.0.1 (not, "secret")."""
    for _ in range(20):  # the port free on 127.0.0.2 may be taken on 127.0.0.1
        with ScriptedServer(host="127.0.0.2") as safe:
            try:
                secret = ScriptedServer(host="127.0.0.1", port=safe.port)
            except OSError:
                continue
            with secret:
                safe.script("/page", Reply(200, body=b"safe"))
                secret.script("/page", Reply(200, body=b"secret"))
                yield safe, secret
                return
    pytest.fail("no port free on both 127.0.0.1 and 127.0.0.2")


SLOW = "slow"  # a FakeDNS answer: no answer for SLOW_DNS_S, then a failure
SLOW_DNS_S = 15  # the guard must give up long before this


class FakeDNS:
    """A DNS server (an attacker's, or a broken one) for one made-up name: each lookup of it
    takes the next answer ("127.0.0.2", "127.0.0.3,127.0.0.2" or SLOW), and the last one
    repeats. With a zero TTL, every lookup asks. Other names go to `others`."""

    def __init__(self, name: str, *answers: str, others=REAL_GETADDRINFO):
        self.name, self.answers, self.lookups, self.others = name, list(answers), 0, others
        self.release = threading.Event()  # ends the SLOW answers still waiting

    def __call__(self, host, port, *args, **kwargs):
        if (host.decode() if isinstance(host, bytes) else host) != self.name:
            return self.others(host, port, *args, **kwargs)
        self.lookups += 1
        answer = self.answers[min(self.lookups, len(self.answers)) - 1]
        if answer == SLOW:
            self.release.wait(SLOW_DNS_S)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        # "a,b": a name with two addresses, in that order of preference
        addresses = answer.split(",")
        return [info for a in addresses for info in REAL_GETADDRINFO(a, port, *args, **kwargs)]


@pytest.fixture
def fake_dns(stage, monkeypatch):
    """fake_dns(name, *answers) replaces socket.getaddrinfo for that name (and keeps the
    names installed before it)."""
    installed = []

    def install(name: str, *answers: str) -> FakeDNS:
        dns = FakeDNS(name, *answers, others=socket.getaddrinfo)
        monkeypatch.setattr(socket, "getaddrinfo", dns)
        installed.append(dns)
        return dns

    yield install
    for dns in installed:
        dns.release.set()
    # The lookup threads are the process's: the next test starts with all of them free.
    lookup_threads = jobkit.ssrf.lookup_threads
    poll(lambda: lookup_threads.in_flight() == 0, SLOW_DNS_S, "the slow lookups to end")


@pytest.mark.parametrize("via_redirect", [False, True], ids=["direct", "redirect-hop"])
def test_a_name_that_rebinds_after_the_check_cannot_move_the_connection(
    twin_env, fake_dns, client, drain, twin_servers, via_redirect
):
    safe, secret = twin_servers
    page = f"http://rebind.test:{safe.port}/page"
    if via_redirect:  # the worker checks the hop once; the API never sees this name
        url, honest = safe.script("/hop", Reply(302, headers={"Location": page})), 1
    else:  # the API checks it, then the worker
        url, honest = page, 2
    # Public (here: allow-listed) for the checks, then loopback: a DNS rebinding attack.
    dns = fake_dns("rebind.test", *["127.0.0.2"] * honest, "127.0.0.1")
    job_id = enqueue(client, "fetch", {"url": url})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert not secret.hits, "the fetch reached 127.0.0.1, which the guard never allowed"
    assert job["status"] == "complete", job
    assert job["result"]["sha256"] == sha256(b"safe")
    assert job["result"]["url"] == page
    assert dns.lookups == honest  # one lookup per check, none behind its back


def test_a_pinned_fetch_still_sends_the_host_name(twin_env, fake_dns, client, drain, twin_servers):
    safe, _ = twin_servers
    fake_dns("named.test", "127.0.0.2")
    job_id = enqueue(client, "fetch", {"url": f"http://named.test:{safe.port}/page"})
    drain()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "complete"
    assert safe.request_headers["/page"][0]["Host"] == f"named.test:{safe.port}"


def test_a_name_whose_first_address_is_unreachable_is_fetched_from_the_next(
    twin_env, fake_dns, client, drain, twin_servers
):
    safe, _ = twin_servers
    fake_dns("two.test", "127.0.0.3,127.0.0.2")
    job_id = enqueue(client, "fetch", {"url": f"http://two.test:{safe.port}/page"})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["attempts"] == 1
    assert job["result"]["sha256"] == sha256(b"safe")


def test_an_idempotent_retry_of_an_accepted_fetch_replays_it_without_a_second_lookup(
    twin_env, fake_dns, client, raw_redis
):
    # Allowed when first asked, loopback since: the retry's own lookup refused it (422)
    # while the first request's job was live. The key is looked up first now, and only a
    # new claim is checked.
    dns = fake_dns("moving.test", "127.0.0.2", "127.0.0.1")
    body = {"url": "http://moving.test:9/page"}
    first = client.post("/tasks/fetch", json=body, headers={"Idempotency-Key": "fetch-1"})
    retry = client.post("/tasks/fetch", json=body, headers={"Idempotency-Key": "fetch-1"})
    new_claim = client.post("/tasks/fetch", json=body, headers={"Idempotency-Key": "fetch-2"})

    assert first.status_code == 202, first.text
    assert retry.status_code == 202, retry.text
    assert retry.json()["job_id"] == first.json()["job_id"]
    assert retry.headers["idempotent-replayed"] == "true"
    assert new_claim.status_code == 422, new_claim.text  # a new claim is still checked...
    assert "127.0.0.1" in new_claim.json()["detail"][0]["msg"]
    assert not raw_redis.exists("idempotency:fetch-2")  # ...and a refused one frees its key
    assert dns.lookups == 2  # the first request's and the new claim's, not the replay's
    assert raw_redis.zcard("arq:queue") == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for the name tls.test only: (certificate, key) files."""
    openssl = require("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.e2e  # openssl makes the certificate
@pytest.mark.parametrize(("name", "matches"), [("tls.test", True), ("other.test", False)])
def test_a_pinned_https_fetch_verifies_the_certificate_against_the_host_name(
    twin_env, fake_dns, certificate, monkeypatch, client, drain, name, matches
):
    context, server_names = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), []
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda _socket, server_name, _context: server_names.append(server_name)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # httpx trusts it (and only it)
    fake_dns(name, "127.0.0.2")
    with ScriptedServer(host="127.0.0.2", tls=context) as server:
        server.script("/page", Reply(200, body=b"over tls"))
        job_id = enqueue(client, "fetch", {"url": f"https://{name}:{server.port}/page"})
        drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert server_names and set(server_names) == {name}  # SNI: the name, not 127.0.0.2
    if matches:
        assert job["status"] == "complete", job
        assert job["result"]["sha256"] == sha256(b"over tls")
    else:  # verified against the name it asked for, so the certificate for tls.test fails
        assert job["status"] == "failed", job
        assert "Hostname mismatch" in job["error"] and "other.test" in job["error"]


@pytest.mark.e2e  # openssl makes the certificate
def test_a_certificate_that_fails_verification_is_a_final_failure_not_retried(
    twin_env, fake_dns, certificate, client, drain
):
    # Self-signed, and not trusted here (no SSL_CERT_FILE): asking again gets the same
    # certificate. It was retried as if the network had failed, FETCH_MAX_TRIES times.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    fake_dns("tls.test", "127.0.0.2")
    with ScriptedServer(host="127.0.0.2", tls=context) as server:
        server.script("/page", Reply(200, body=b"over tls"))
        job_id = enqueue(client, "fetch", {"url": f"https://tls.test:{server.port}/page"})
        drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed", job
    assert "CERTIFICATE_VERIFY_FAILED" in job["error"], job["error"]
    assert job["attempts"] == 1, job["attempt_log"]


# --- slow DNS: bounded in time, and on threads of its own ------------------------------

SLOW_SUBMISSIONS = 8  # more than asyncio's default executor has threads on 2 cores


def test_slow_dns_gets_a_422_in_time_and_does_not_stall_other_requests(
    stage, settings_env, fake_dns, client
):
    def timed(method, path, **kwargs):
        began = time.monotonic()
        response = getattr(client, method)(path, **kwargs)
        return response, time.monotonic() - began

    dns = fake_dns("slow.test", SLOW)
    share = jobkit.ssrf.LOOKUP_THREADS_PER_CLIENT
    slots = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor
    count = max(SLOW_SUBMISSIONS, slots + 2)
    with ThreadPoolExecutor(count) as pool:
        slow = [
            pool.submit(timed, "post", "/tasks/fetch", json={"url": "http://slow.test/"})
            for _ in range(count)
        ]
        poll(lambda: dns.lookups >= share, 10, "the slow lookups to start")
        add, add_s = timed("post", "/tasks/add", json={"x": 1, "y": 2})
        health, health_s = timed("get", "/health")
        answers = [future.result() for future in slow]
    # Before: the add waited 15 s, until the slow lookups gave their threads back.
    assert add.status_code == 202 and add_s < 5, (add.status_code, add_s)
    assert health.status_code == 200 and health_s < 5, (health.status_code, health_s)
    # This client's share of the lookup threads ran out of time; the rest never had one.
    statuses = sorted(response.status_code for response, _ in answers)
    assert statuses == [422] * share + [429] * (count - share), statuses
    for response, took in answers:
        assert took < 8, f"the lookup was bounded at about 2 s, yet took {took:.1f} s"
        if response.status_code == 422:
            assert "could not resolve 'slow.test' in time" in response.json()["detail"][0]["msg"]
        else:
            assert "DNS lookups in flight" in response.json()["detail"]
            assert response.headers["retry-after"]


def test_a_full_lookup_pool_answers_a_valid_url_503_not_422(
    stage, settings_env, fake_dns, client, monkeypatch
):
    # Four slow names in flight held every lookup thread, and every other fetch got
    # "422 URL refused: could not resolve 'public.test' in time": a 4xx blaming a valid URL
    # for the server's shortage.
    lookups = jobkit.ssrf
    threads = lookups.LOOKUP_THREADS
    monkeypatch.setattr(lookups, "LOOKUP_THREADS_PER_CLIENT", threads)  # one client plays many
    fake_dns("public.test", "8.8.8.8")
    slow = fake_dns("slow.test", SLOW)
    with ThreadPoolExecutor(threads) as pool:
        waiting = [
            pool.submit(client.post, "/tasks/fetch", json={"url": "http://slow.test/"})
            for _ in range(threads)
        ]
        poll(lambda: slow.lookups == threads, 10, "the slow lookups to take every thread")
        busy = client.post("/tasks/fetch", json={"url": "http://public.test/"})
        slow.release.set()
        for future in waiting:
            future.result()
    assert busy.status_code == 503, busy.text
    assert f"all {threads} DNS lookup threads are busy" in busy.json()["detail"]
    assert busy.headers["retry-after"] == "2"
    poll(lambda: lookups.lookup_threads.in_flight() == 0, 10, "the slow lookups to end")
    enqueue(client, "fetch", {"url": "http://public.test/"})  # accepted once a thread is free


def test_one_client_may_hold_only_its_share_of_the_lookup_threads(
    stage, settings_env, fake_dns, client
):
    share = jobkit.ssrf.LOOKUP_THREADS_PER_CLIENT
    fake_dns("public.test", "8.8.8.8")
    slow = fake_dns("slow.test", SLOW)
    with ThreadPoolExecutor(share) as pool:
        waiting = [
            pool.submit(client.post, "/tasks/fetch", json={"url": "http://slow.test/"})
            for _ in range(share)
        ]
        poll(lambda: slow.lookups == share, 10, "this client's slow lookups to start")
        refused = client.post("/tasks/fetch", json={"url": "http://public.test/"})
        slow.release.set()
        for future in waiting:
            future.result()
    assert refused.status_code == 429, refused.text
    assert f"this client already has {share} DNS lookups in flight" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "2"


def test_a_lookup_that_times_out_in_the_worker_is_retried(server, fake_dns, client, drain):
    server.script("/page", Reply(200, body=b"ok"))
    fake_dns("flaky.test", "127.0.0.1", SLOW, "127.0.0.1")  # the API's, then the worker's
    job_id = enqueue(client, "fetch", {"url": f"http://flaky.test:{server.port}/page"})
    drain()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "complete", job
    assert job["attempts"] == 2
    assert "could not resolve 'flaky.test' in time" in job["attempt_log"][0]["error"]
