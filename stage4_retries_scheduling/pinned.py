"""Connect to the address the SSRF guard checked, not to whatever the name says next.

Checking a URL and then handing it to an HTTP client is not enough. The client looks the
name up again when it connects, and a DNS server the attacker controls can answer a public
address to the check and 127.0.0.1 to the connection a moment later ("DNS rebinding", a
time-of-check to time-of-use gap). Checking again just before the request narrows the
window; it does not close it. So the request goes to the checked IP itself, while the name
stays where the server expects it: in the Host header, the TLS server name (SNI) and the
certificate check.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import httpx

from .urls import IPAddress, IPNetwork, check_url

# A name may have several addresses, some unreachable from here (IPv6 on an IPv4-only
# network, say): try a few of them in turn, each within the request's connect timeout.
MAX_ADDRESSES_TRIED = 3


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
    # One at a time; a real client would race them ("happy eyeballs", RFC 8305).
    *others, last = addresses
    for address in others:
        with suppress(httpx.ConnectError, httpx.ConnectTimeout):  # then try the next one
            return await client.send(pinned_to(request, address), stream=True)
    return await client.send(pinned_to(request, last), stream=True)


def pinned_to(request: httpx.Request, address: IPAddress) -> httpx.Request:
    request.url = request.url.copy_with(host=str(address))  # the Host header stays
    return request


# --8<-- [end:pinned]
