"""The SSRF guard: which URLs `fetch` may touch.

A job queue that fetches URLs sent by clients is an open proxy into your network unless
it refuses internal addresses: the cloud metadata service (169.254.169.254) hands out
credentials, and admin ports on 127.0.0.1 or 10.x trust whoever reaches them.
"""

import asyncio
import ipaddress
import socket
from functools import partial

import httpx

from .lookups import lookup_threads

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS lookup that takes longer than this fails: a 422 in the API, a retry in the worker.
LOOKUP_TIMEOUT_S = 2.0
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeURL(ValueError):
    """The URL is not allowed; the message says why."""


class LookupTimedOut(UnsafeURL):
    """The name did not resolve in time: maybe the URL is fine and DNS is slow."""


def parse_allowlist(entries: list[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


# The instance-metadata services of AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6) and
# Alibaba Cloud: the classic SSRF target, as they hand out the machine's credentials.
CLOUD_METADATA = {
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
}
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv6 clients reaching IPv4


def _carried_ipv4(ip: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """IPv6 forms with an IPv4 address inside, which is where the packets really go."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour:
        return "6to4", ip.sixtofour
    if ip.teredo:
        return "Teredo", ip.teredo[1]  # (server, client): the client is the destination
    if ip in NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def _why_internal(ip: IPAddress) -> str | None:
    if carried := _carried_ipv4(ip):
        form, ipv4 = carried
        if why := _why_internal(ipv4):  # 2002:7f00:1:: is 127.0.0.1 by way of 6to4
            return f"the {form} form of {ipv4}, {why}"
        if form != "Teredo":  # it reaches a public IPv4 address, whatever Python's table says
            return None
    if ip in CLOUD_METADATA:
        return "a cloud-metadata address"
    # Most specific first: Python counts loopback and link-local as "private" too. Teredo
    # (2001::/32) and the old IPv4-compatible ::a.b.c.d are never global there: refused.
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return f"a {kind.replace('_', '-')} address"
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT, and some clouds' metadata)
        return "a non-global address"
    return None


# --8<-- [start:parse_url]
def parse_url(url: str) -> httpx.URL:
    """The URL as httpx will read it, or UnsafeURL if it is malformed or not http(s). No DNS."""
    # Whitespace and control characters are refused, not cleaned: parsers disagree on
    # what "http://a\tb/" means, and an SSRF guard must read a URL as the client does.
    if any(char.isspace() or not char.isprintable() for char in url):
        raise UnsafeURL("the URL contains whitespace or a control character")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURL(f"malformed URL: {exc}") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise UnsafeURL(f"only http and https URLs are fetched, not {parsed.scheme or 'none'!r}")
    try:
        host = parsed.host  # decodes an IDNA ("xn--") name, and refuses one that doesn't decode
    except UnicodeError as exc:  # idna.IDNAError
        raise UnsafeURL(f"malformed URL: the host is not a valid IDNA name ({exc})") from None
    if not host:
        raise UnsafeURL("the URL has no host")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeURL(f"bad port: {parsed.port}")
    return parsed


# --8<-- [end:parse_url]


async def resolve(host: str, port: int, client: str | None = None) -> list[IPAddress]:
    """The guard's one DNS lookup: every address of `host`, within LOOKUP_TIMEOUT_S.
    `client`: the API client that asks, held to its share of the threads."""
    lookup = partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        started = lookup_threads.start(lookup, client)  # or LookupsBusy: lookups.py
        infos = await asyncio.wait_for(asyncio.wrap_future(started), LOOKUP_TIMEOUT_S)
    except TimeoutError:  # the thread carries on, but nobody waits for it
        raise LookupTimedOut(
            f"could not resolve {host!r} in time ({LOOKUP_TIMEOUT_S:g} s)"
        ) from None
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve {host!r}: {exc}") from None
    found = [ipaddress.ip_address(str(sockaddr[0]).split("%")[0]) for *_, sockaddr in infos]
    return list(dict.fromkeys(found))  # once each, in the resolver's order of preference


# --8<-- [start:check_url]
async def check_url(
    url: str, allowlist: list[IPNetwork], client: str | None = None
) -> list[IPAddress]:
    """Raise UnsafeURL unless `url` is http(s) and every address its host resolves to is
    public (or in the allowlist); return those addresses, the only ones to connect to."""
    parsed = parse_url(url)
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as DNS wants it
    addresses = await resolve(host, parsed.port or DEFAULT_PORTS[parsed.scheme], client)
    # Check every address, not just the first: a name may resolve to one public and one
    # private address, and a client that connects by name may pick either.
    for ip in addresses:
        if any(ip in network for network in allowlist):
            continue
        if why := _why_internal(ip):
            raise UnsafeURL(f"{host} resolves to {ip}, {why}")
    return addresses


# --8<-- [end:check_url]
