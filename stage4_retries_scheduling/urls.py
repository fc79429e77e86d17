"""The SSRF guard: which URLs `fetch` may touch.

A job queue that fetches URLs sent by clients is an open proxy into your network unless
it refuses internal addresses: the cloud metadata service (169.254.169.254) hands out
credentials, and admin ports on 127.0.0.1 or 10.x trust whoever reaches them.
"""

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeURL(ValueError):
    """The URL is not allowed; the message says why."""


def parse_allowlist(entries: list[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


# The instance-metadata services of AWS/GCP/Azure/OpenStack (IPv4 and AWS's IPv6) and
# Alibaba Cloud: the classic SSRF target, as they hand out the machine's credentials.
CLOUD_METADATA = {
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
}


def _why_internal(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip in CLOUD_METADATA:
        return "cloud-metadata"
    # Most specific first: Python counts loopback and link-local as "private" too.
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT, and some clouds' metadata)
        return "non-global"
    return None


# --8<-- [start:check_url]
async def check_url(url: str, allowlist: list[IPNetwork]) -> None:
    """Raise UnsafeURL unless `url` is http(s) and every address its host resolves to is public
    (or in the allowlist)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"only http and https URLs are fetched, not {parts.scheme or 'none'!r}")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UnsafeURL(f"bad port: {exc}") from None
    if not host:
        raise UnsafeURL("the URL has no host")
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve {host!r}: {exc}") from None
    # Check every address, not just the first: a name may resolve to one public and one
    # private address, and the client may connect to either.
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0].split("%")[0])
        if any(ip in network for network in allowlist):
            continue
        if why := _why_internal(ip):
            raise UnsafeURL(f"{host} resolves to {ip}, a {why} address")


# --8<-- [end:check_url]
