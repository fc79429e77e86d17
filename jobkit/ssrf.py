"""Which URLs a server may fetch for a client: parsing, one bounded DNS lookup, and the
address arithmetic that tells a public address from an internal one.

A job queue that fetches URLs sent by clients is an open proxy into its own network unless it
refuses internal addresses: the cloud metadata service (169.254.169.254) hands out
credentials, and admin ports on 127.0.0.1 or 10.x trust whoever reaches them.

- `check_url(url, allowlist, client)`: parse the URL, resolve its host once, and refuse it
  (UnsafeURL) if ANY of its addresses is internal; return the addresses, the only ones to
  connect to (jobkit.pinned_http connects to them).
- `why_internal(ip)`: why an address is refused, or None: loopback, private, link-local,
  multicast, unspecified, reserved, carrier-grade NAT, the clouds' metadata services, and any
  of those carried inside an IPv6 form (IPv4-mapped, 6to4, Teredo, NAT64).
- `resolve(host, port, client)`: the lookup, on a few threads of its own shared fairly between
  clients, bounded in time; LookupTimedOut and LookupsBusy tell a slow or saturated resolver
  from a bad URL.

A learner may skip this module: stage 4's fetch.py shows the guard's three steps and calls it.
"""

import asyncio
import ipaddress
import socket
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A DNS lookup that takes longer than this fails (the caller decides: a 422, a retry).
LOOKUP_TIMEOUT_S = 2.0
# Threads for DNS lookups in each process, and how many of them one API client's lookups
# may hold at once, so that one client's slow names cannot take them all.
LOOKUP_THREADS = 4
LOOKUP_THREADS_PER_CLIENT = 2
DEFAULT_PORTS = {"http": 80, "https": 443}
# The instance-metadata services of AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6) and Alibaba
# Cloud: the classic SSRF target, as they hand out the machine's credentials.
CLOUD_METADATA = {
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
}
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known prefix: IPv6 clients reaching IPv4


class UnsafeURL(ValueError):
    """The URL is not allowed; the message says why."""


class LookupTimedOut(UnsafeURL):
    """The name did not resolve in time: maybe the URL is fine and DNS is slow."""


class LookupsBusy(Exception):
    """No lookup thread is free (or none of this client's share): the server is short of
    them, and the URL may be fine."""

    def __init__(self, message: str, client_share: bool) -> None:
        super().__init__(message)
        self.client_share = client_share  # True: this client's share is used up


def parse_allowlist(entries: list[str]) -> list[IPNetwork]:
    """Networks let through although internal, e.g. ["10.1.2.0/24"]."""
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def parse_url(url: str) -> httpx.URL:
    """The URL as httpx will read it, or UnsafeURL if it is malformed or not http(s). No DNS."""
    # Whitespace and control characters are refused, not cleaned: parsers disagree on what
    # "http://a\tb/" means, and a guard must read a URL as the client that connects does.
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


def why_internal(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched from, or None for a public address."""
    if carried := _carried_ipv4(ip):
        form, ipv4 = carried
        if why := why_internal(ipv4):  # 2002:7f00:1:: is 127.0.0.1 by way of 6to4
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


class LookupThreads:
    """The lookup threads, and who holds them.

    getaddrinfo blocks, so lookups run in threads: their own few, not asyncio's default
    executor, shared with every asyncio.to_thread, where a handful of slow lookups stalled
    everything queued behind them. A lookup holds its thread until getaddrinfo returns, even
    after its caller stopped waiting (a thread cannot be stopped). So a lookup starts only when
    a thread is free for it, and is refused at once (LookupsBusy) when none is: queued behind
    slow ones, it would time out, and the URL would be blamed for the server's shortage. A real
    application might use an async resolver with its own timeouts and a cache instead.
    """

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="dns")
        self.lock = threading.Lock()  # the threads free their slots themselves
        self.held: Counter[str | None] = Counter()  # slots per client (None: no client)

    def start(self, lookup: Callable[[], Any], client: str | None) -> Future[Any]:
        with self.lock:
            if self.held.total() >= LOOKUP_THREADS:
                raise LookupsBusy(f"all {LOOKUP_THREADS} DNS lookup threads are busy", False)
            if client is not None and self.held[client] >= LOOKUP_THREADS_PER_CLIENT:
                share = f"{LOOKUP_THREADS_PER_CLIENT} DNS lookups in flight"
                raise LookupsBusy(f"this client already has {share}", True)
            self.held[client] += 1
        future = self.executor.submit(lookup)
        future.add_done_callback(lambda _: self.free(client))
        return future

    def free(self, client: str | None) -> None:
        with self.lock:
            self.held[client] -= 1
            self.held = +self.held  # drop the clients down to zero

    def in_flight(self) -> int:
        with self.lock:
            return self.held.total()


lookup_threads = LookupThreads(LOOKUP_THREADS)


async def resolve(host: str, port: int, client: str | None = None) -> list[IPAddress]:
    """Every address of `host`, within LOOKUP_TIMEOUT_S, in the resolver's order.
    `client`: the API client that asks, held to its share of the threads."""
    lookup = partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        started = lookup_threads.start(lookup, client)
        infos = await asyncio.wait_for(asyncio.wrap_future(started), LOOKUP_TIMEOUT_S)
    except TimeoutError:  # the thread carries on, but nobody waits for it
        raise LookupTimedOut(
            f"could not resolve {host!r} in time ({LOOKUP_TIMEOUT_S:g} s)"
        ) from None
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve {host!r}: {exc}") from None
    found = [ipaddress.ip_address(str(sockaddr[0]).split("%")[0]) for *_, sockaddr in infos]
    return list(dict.fromkeys(found))  # once each


async def check_url(
    url: str, allowlist: list[IPNetwork], client: str | None = None
) -> list[IPAddress]:
    """Raise UnsafeURL unless `url` is http(s) and every address its host resolves to is
    public (or in the allowlist); return those addresses, the only ones to connect to."""
    parsed = parse_url(url)
    host = parsed.raw_host.decode("ascii")  # IDNA-encoded, as DNS wants it
    addresses = await resolve(host, parsed.port or DEFAULT_PORTS[parsed.scheme], client)
    # Every address, not just the first: a name may resolve to one public and one private
    # address, and a client that connects by name may pick either.
    for ip in addresses:
        if any(ip in network for network in allowlist):
            continue
        if why := why_internal(ip):
            raise UnsafeURL(f"{host} resolves to {ip}, {why}")
    return addresses
