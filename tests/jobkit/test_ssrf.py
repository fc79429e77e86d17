"""jobkit.ssrf and jobkit.pinned_http: which URLs may be fetched, and a GET that reaches only
the addresses that were checked, with its body capped as it is decoded."""

import asyncio
import gzip
import ipaddress
import socket
import ssl
import threading
import zlib

import httpx
import pytest

import jobkit.ssrf
from jobkit import pinned_http, ssrf
from tests.httpserver import Reply, ScriptedServer

LOOPBACK = ssrf.parse_allowlist(["127.0.0.0/8"])
REAL_GETADDRINFO = socket.getaddrinfo


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("10.1.2.3", "a private address"),
        ("169.254.169.254", "a cloud-metadata address"),
        ("100.64.0.1", "a non-global address"),
        ("::ffff:127.0.0.1", "the IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("2002:a00:1::", "the 6to4 form of 10.0.0.1, a private address"),
        ("64:ff9b::a9fe:a9fe", "the NAT64 form of 169.254.169.254, a cloud-metadata address"),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "a private address"),  # Teredo of 8.8.8.8
        ("93.184.215.14", None),
        ("64:ff9b::5db8:d70e", None),  # NAT64 of a public address
    ],
)
def test_an_address_is_judged_by_where_its_packets_go(address, why):
    assert ssrf.why_internal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://a\tb/", "whitespace or a control character"),
        ("ftp://example.org/", "only http and https"),
        ("http://xn--zz.example/", "not a valid IDNA name"),
        ("http:///nohost", "no host"),
        ("http://[::1/", "malformed URL"),
    ],
)
def test_a_url_that_cannot_be_read_as_the_client_reads_it_is_refused(url, why):
    with pytest.raises(ssrf.UnsafeURL, match=why):
        ssrf.parse_url(url)


def test_every_address_of_a_name_is_checked_and_the_allowlist_lets_some_through(monkeypatch):
    def two_answers(host, port, *args, **kwargs):
        if host == "twins.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                    for ip in ("93.184.215.14", "10.0.0.7")]  # fmt: skip
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", two_answers)
    with pytest.raises(ssrf.UnsafeURL, match=r"twins\.test resolves to 10\.0\.0\.7, a private"):
        asyncio.run(ssrf.check_url("http://twins.test/", []))
    allowed = asyncio.run(
        ssrf.check_url("http://twins.test/", ssrf.parse_allowlist(["10.0.0.0/8"]))
    )
    assert [str(ip) for ip in allowed] == ["93.184.215.14", "10.0.0.7"]


def test_a_name_that_does_not_resolve_is_refused(monkeypatch):
    def nxdomain(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    with pytest.raises(ssrf.UnsafeURL, match=r"cannot resolve 'gone\.test'"):
        asyncio.run(ssrf.check_url("http://gone.test/", []))


def test_a_slow_lookup_times_out_and_a_full_pool_or_share_is_busy_not_unsafe(monkeypatch):
    release = threading.Event()

    def slow(host, *args, **kwargs):
        release.wait(10)
        raise socket.gaierror(socket.EAI_NONAME, "late")

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    monkeypatch.setattr(jobkit.ssrf, "LOOKUP_TIMEOUT_S", 0.05)

    async def main() -> None:
        with pytest.raises(ssrf.LookupTimedOut):
            await ssrf.resolve("slow.test", 80, client="a")
        with pytest.raises(ssrf.LookupTimedOut):
            await ssrf.resolve("slow.test", 80, client="a")
        with pytest.raises(ssrf.LookupsBusy) as share:  # "a" holds its 2 threads still
            await ssrf.resolve("slow.test", 80, client="a")
        assert share.value.client_share
        for other in ("b", "b"):
            with pytest.raises(ssrf.LookupTimedOut):
                await ssrf.resolve("slow.test", 80, client=other)
        with pytest.raises(ssrf.LookupsBusy) as full:  # all 4 held
            await ssrf.resolve("slow.test", 80, client="c")
        assert not full.value.client_share

    try:
        asyncio.run(main())
    finally:
        release.set()
    deadline = threading.Event()
    while ssrf.lookup_threads.in_flight() and not deadline.wait(0.05):
        pass
    assert ssrf.lookup_threads.in_flight() == 0


@pytest.fixture
def server():
    with ScriptedServer() as scripted:
        yield scripted


async def get(url: str, max_bytes: int = 1000) -> tuple[int, bytes, str]:
    """A pinned GET of `url` from the addresses the guard found, as a fetch does."""
    async with pinned_http.make_client(timeout_s=5) as client:
        addresses = await ssrf.check_url(url, LOOPBACK)
        async with pinned_http.pinned_get(client, url, addresses) as response:
            body = await pinned_http.read_capped(response, max_bytes)
            return response.status_code, body, response.request.headers["host"]


def test_the_request_goes_to_the_checked_address_with_the_name_kept_as_host(server, monkeypatch):
    url = server.script("/", Reply(200, body=b"hello"))
    name = url.replace("127.0.0.1", "pinned.test")
    lookups = []

    def once(host, port, *args, **kwargs):
        lookups.append(host)
        if host == "pinned.test":
            return REAL_GETADDRINFO("127.0.0.1", port, *args, **kwargs)
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", once)
    status, body, host = asyncio.run(get(name))
    assert (status, body) == (200, b"hello")
    assert host == name.split("/")[2]  # pinned.test:<port>
    assert lookups == ["pinned.test"]  # the guard's one lookup, and no second one


def test_a_body_over_the_cap_is_refused_as_it_is_decoded(server):
    bomb = gzip.compress(b"\0" * 10_000_000)
    url = server.script("/bomb", Reply(200, body=bomb, headers={"Content-Encoding": "gzip"}))
    with pytest.raises(pinned_http.ResponseRefused, match="over 1000 bytes"):
        asyncio.run(get(url))


def test_gzip_and_deflate_are_decoded_and_other_encodings_refused(server):
    deflated = zlib.compress(b"d" * 10)
    url = server.script("/d", Reply(200, body=deflated, headers={"Content-Encoding": "deflate"}))
    assert asyncio.run(get(url))[1] == b"d" * 10
    url = server.script("/br", Reply(200, body=b"x", headers={"Content-Encoding": "br"}))
    with pytest.raises(pinned_http.ResponseRefused, match="'br' is not supported"):
        asyncio.run(get(url))
    url = server.script("/bad", Reply(200, body=b"not gzip", headers={"Content-Encoding": "gzip"}))
    with pytest.raises(pinned_http.ResponseRefused, match="cannot decode the gzip body"):
        asyncio.run(get(url))


def test_a_redirect_is_left_to_the_caller_and_a_malformed_one_is_refused(server):
    url = server.script("/r", Reply(302, headers={"Location": "/next"}))
    assert pinned_http.next_hop(url, "/next") == url.replace("/r", "/next")
    assert asyncio.run(get(url))[0] == 302  # not followed by the client itself
    bad = server.script("/bad", Reply(302, headers={"Location": "http://xn--/"}))
    with pytest.raises(pinned_http.BadRedirect, match="bad redirect Location"):
        asyncio.run(get(bad))


def test_the_next_address_is_tried_when_the_first_refuses_the_connection(server):
    url = server.script("/", Reply(200, body=b"second"))
    port = int(url.split(":")[2].split("/")[0])
    closed = ipaddress.ip_address("127.0.0.3")  # nothing listens there

    async def main() -> bytes:
        async with pinned_http.make_client(timeout_s=5) as client:
            live = ipaddress.ip_address("127.0.0.1")
            async with pinned_http.pinned_get(
                client, f"http://127.0.0.1:{port}/", [closed, live]
            ) as r:
                return await pinned_http.read_capped(r, 100)

    assert asyncio.run(main()) == b"second"


def test_a_certificate_refused_is_found_down_the_chain_of_causes():
    verify = ssl.SSLCertVerificationError("certificate verify failed")
    try:
        try:
            raise verify
        except ssl.SSLError as inner:
            raise httpx.ConnectError("TLS failed") from inner
    except httpx.ConnectError as outer:
        assert pinned_http.certificate_refused(outer)
    assert not pinned_http.certificate_refused(httpx.ConnectError("refused"))
