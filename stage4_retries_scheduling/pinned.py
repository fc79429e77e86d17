"""The worker's HTTP client for fetch: it reaches only the addresses the SSRF guard checked.

Checking a URL and then handing it to an HTTP client is not enough. The client looks the
name up again when it connects, and a DNS server the attacker controls can answer a public
address to the check and 127.0.0.1 to the connection a moment later ("DNS rebinding", a
time-of-check to time-of-use gap). Checking again just before the request narrows the
window; it does not close it. So the request goes to the checked IP itself, while the name
stays where the server expects it: in the Host header, the TLS server name (SNI) and the
certificate check. Redirects are followed by hand, each hop checked the same way, and the
body is capped as it is decoded.
"""

import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx

from .config import Settings
from .urls import IPAddress, IPNetwork, UnsafeURL, check_url, parse_url

# A name may have several addresses, some unreachable from here (IPv6 on an IPv4-only
# network, say): try a few of them in turn, each within the request's connect timeout.
MAX_ADDRESSES_TRIED = 3


class FetchFailed(Exception):
    """A final failure: the job ends `failed` with this message, and is not retried."""


def make_client(settings: Settings) -> httpx.AsyncClient:
    """The worker's one HTTP client, shared by every fetch job."""
    return httpx.AsyncClient(
        timeout=settings.fetch_timeout_s,
        follow_redirects=False,  # followed by hand, so each hop is checked: get_checked()
        # No keep-alive: requests go to checked IPs, so one pooled connection would serve
        # every name on that IP, all behind the first name's TLS check.
        limits=httpx.Limits(max_keepalive_connections=0),
        event_hooks={"response": [refuse_bad_redirects]},
    )


# --8<-- [start:get_checked]
async def get_checked(client: httpx.AsyncClient, url: str, settings: Settings) -> dict[str, Any]:
    """GET `url` from checked addresses only, following redirects by hand, with a size cap."""
    for _ in range(settings.fetch_max_redirects + 1):
        # Every hop is resolved, checked and connected to by address: a check followed by
        # httpx's own lookup would leave DNS free to change in between.
        async with pinned_get(client, url, settings.fetch_allowlist_networks, IDENTITY) as got:
            if got.is_redirect and "location" in got.headers:
                url = next_hop(url, got.headers["location"])
                continue
            body = await read_capped(got, settings.fetch_max_bytes)
            return {"response": got, "body": body, "url": url}
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects")


# --8<-- [end:get_checked]


# --8<-- [start:pinned]
@asynccontextmanager
async def pinned_get(
    client: httpx.AsyncClient, url: str, allowlist: list[IPNetwork], headers: dict[str, str]
) -> AsyncIterator[httpx.Response]:
    """GET `url` (streamed) from an address the guard has just checked, and no other."""
    addresses = await check_url(url, allowlist)  # the only DNS lookup
    request = client.build_request("GET", url, headers=headers)  # Host: from the name
    # httpcore uses this name for SNI and to verify the certificate, instead of the IP.
    request.extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
    response = await send_to_one_of(client, request, addresses[:MAX_ADDRESSES_TRIED])
    try:
        yield response
    finally:
        await response.aclose()


async def send_to_one_of(
    client: httpx.AsyncClient, request: httpx.Request, addresses: list[IPAddress]
) -> httpx.Response:
    """Send `request` to the first of `addresses` that takes the connection: no lookup."""
    # One at a time; a real client would race them ("happy eyeballs").
    *others, last = addresses
    for address in others:
        with suppress(httpx.ConnectError, httpx.ConnectTimeout):  # then try the next one
            return await client.send(pinned_to(request, address), stream=True)
    return await client.send(pinned_to(request, last), stream=True)


def pinned_to(request: httpx.Request, address: IPAddress) -> httpx.Request:
    request.url = request.url.copy_with(host=str(address))  # the Host header stays
    return request


# --8<-- [end:pinned]


def next_hop(url: str, location: str) -> str:
    """Where a redirect points; a malformed Location is final (asking again won't fix it)."""
    try:
        return str(parse_url(str(httpx.URL(url).join(location))))
    except (httpx.InvalidURL, UnsafeURL) as exc:
        raise FetchFailed(f"bad redirect Location {location!r}: {exc}") from None


async def refuse_bad_redirects(response: httpx.Response) -> None:
    # A response hook, as httpx reads Location even when it does not follow redirects, and
    # calls a malformed one a protocol error: a retry, for an answer that won't change.
    if response.is_redirect and "location" in response.headers:
        next_hop(str(response.url), response.headers["location"])


# --8<-- [start:read_capped]
# Bodies are asked for unencoded, and gzip/deflate are decoded here if a server sends them
# anyway. httpx's own decoding expands a whole network read at once, and 64 KiB of gzip
# can hold 64 MiB of zeros: a cap checked after decoding comes too late.
IDENTITY = {"Accept-Encoding": "identity"}
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    """The decoded body, or FetchFailed as soon as it passes `max_bytes`."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", *WBITS):
        raise FetchFailed(f"Content-Encoding {encoding!r} is not supported")
    decoder = zlib.decompressobj(WBITS[encoding]) if encoding in WBITS else None
    body = bytearray()
    async for chunk in response.aiter_raw():
        try:  # max_length: never more output than we may still keep, whatever the ratio
            body += decoder.decompress(chunk, max_bytes + 1 - len(body)) if decoder else chunk
        except zlib.error as exc:
            raise FetchFailed(f"cannot decode the {encoding} body: {exc}") from None
        if len(body) > max_bytes:
            raise FetchFailed(f"response is over {max_bytes} bytes")
    return bytes(body)


# --8<-- [end:read_capped]
