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
from contextlib import asynccontextmanager

import httpx

from .urls import IPNetwork, check_url


# --8<-- [start:pinned]
@asynccontextmanager
async def pinned_get(
    client: httpx.AsyncClient, url: str, allowlist: list[IPNetwork], headers: dict[str, str]
) -> AsyncIterator[httpx.Response]:
    """GET `url` (streamed) from an address the guard has just checked, and no other."""
    # The only DNS lookup. One address: a real client would fall back to the other checked
    # addresses when it cannot connect to this one.
    address = await check_url(url, allowlist)
    request = client.build_request("GET", url, headers=headers)  # Host: from the name
    hostname = request.url.raw_host.decode("ascii")
    request.url = request.url.copy_with(host=str(address))  # connect here, no lookup
    # httpcore uses this name for SNI and to verify the certificate, instead of the IP.
    request.extensions["sni_hostname"] = hostname
    response = await client.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


# --8<-- [end:pinned]
