"""An HTTP GET that reaches only addresses that were checked, with its body capped as it is
decoded: the transport half of an SSRF guard (jobkit.ssrf is the other half).

Checking a URL and then handing it to an HTTP client is not enough. The client looks the name
up again when it connects, and a DNS server the attacker controls can answer a public address
to the check and 127.0.0.1 to the connection a moment later ("DNS rebinding", a time-of-check
to time-of-use gap). So the request goes to the checked IP itself, while the name stays where
the server expects it: in the Host header, the TLS server name (SNI) and the certificate check.

- `make_client(timeout_s)`: one httpx client per process; it follows no redirects by itself
  (each hop must be checked) and keeps no connection alive (one would serve every name on its
  IP, behind the first name's TLS check).
- `pinned_get(client, url, addresses)`: a streamed GET of `url` from one of `addresses`.
- `next_hop(url, location)`: where a redirect points, parsed as the guard parses any URL
  (BadRedirect if it cannot be).
- `read_capped(response, max_bytes)`: the decoded body, or ResponseRefused once it passes
  the cap (httpx's own decoding expands a whole read at once: 64 KiB of gzip can hold 64 MiB).
- `certificate_refused(exc)`: did TLS refuse the server's certificate (a failure that a
  retry will not mend)?

A learner may skip this module: stage 4's fetch.py shows the guard's steps and calls it.
"""

import ssl
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx

from jobkit.ssrf import IPAddress, UnsafeURL, parse_url

# A name may have several addresses, some unreachable from here (IPv6 on an IPv4-only
# network, say): try a few of them in turn, each within the request's connect timeout.
MAX_ADDRESSES_TRIED = 3
# Bodies are asked for unencoded; gzip and deflate are decoded here if a server sends them
# anyway, anything else is refused.
IDENTITY = {"Accept-Encoding": "identity"}
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ResponseRefused(Exception):
    """The response cannot be taken: too big, or in an encoding we do not decode."""


class BadRedirect(UnsafeURL):
    """A redirect's Location is malformed, or not an http(s) URL."""


def make_client(timeout_s: float) -> httpx.AsyncClient:
    """One HTTP client per process, for every pinned request."""
    return httpx.AsyncClient(
        timeout=timeout_s,
        follow_redirects=False,  # each hop is checked by the caller: next_hop()
        limits=httpx.Limits(max_keepalive_connections=0),
        event_hooks={"response": [_refuse_bad_redirects]},
    )


@asynccontextmanager
async def pinned_get(
    client: httpx.AsyncClient, url: str, addresses: list[IPAddress]
) -> AsyncIterator[httpx.Response]:
    """GET `url` (streamed) from the first of `addresses` that takes the connection: no
    lookup of its own. The Host header, SNI and certificate check keep the URL's name."""
    request = client.build_request("GET", url, headers=IDENTITY)
    # httpcore uses this name for SNI and to verify the certificate, instead of the IP.
    request.extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
    response = await _send_to_one_of(client, request, addresses[:MAX_ADDRESSES_TRIED])
    try:
        yield response
    finally:
        await response.aclose()


async def _send_to_one_of(
    client: httpx.AsyncClient, request: httpx.Request, addresses: list[IPAddress]
) -> httpx.Response:
    # One at a time; a real client would race them ("happy eyeballs").
    *others, last = addresses
    for address in others:
        with suppress(httpx.ConnectError, httpx.ConnectTimeout):  # then try the next one
            return await client.send(_pinned_to(request, address), stream=True)
    return await client.send(_pinned_to(request, last), stream=True)


def _pinned_to(request: httpx.Request, address: IPAddress) -> httpx.Request:
    request.url = request.url.copy_with(host=str(address))  # the Host header stays
    return request


def next_hop(url: str, location: str) -> str:
    """Where a redirect points; BadRedirect for a malformed Location."""
    try:
        return str(parse_url(str(httpx.URL(url).join(location))))
    except (httpx.InvalidURL, UnsafeURL) as exc:
        raise BadRedirect(f"bad redirect Location {location!r}: {exc}") from None


async def _refuse_bad_redirects(response: httpx.Response) -> None:
    # A response hook, as httpx reads Location even when it does not follow redirects, and
    # calls a malformed one a protocol error: a retry, for an answer that won't change.
    if response.is_redirect and "location" in response.headers:
        next_hop(str(response.url), response.headers["location"])


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body, or ResponseRefused as soon as it passes `max_bytes`."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", *WBITS):
        raise ResponseRefused(f"Content-Encoding {encoding!r} is not supported")
    decoder = zlib.decompressobj(WBITS[encoding]) if encoding in WBITS else None
    body = bytearray()
    async for chunk in response.aiter_raw():
        try:  # max_length: never more output than we may still keep, whatever the ratio
            body += decoder.decompress(chunk, max_bytes + 1 - len(body)) if decoder else chunk
        except zlib.error as exc:
            raise ResponseRefused(f"cannot decode the {encoding} body: {exc}") from None
        if len(body) > max_bytes:
            raise ResponseRefused(f"response is over {max_bytes} bytes")
    return bytes(body)


def certificate_refused(exc: BaseException) -> bool:
    """Did TLS refuse the server's certificate (untrusted, expired, another name's)? httpx
    reports it as a ConnectError, like a network failure; the ssl module's error is further
    down the chain of causes."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
