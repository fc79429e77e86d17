"""`fetch(url)`: an HTTP GET that fails for reasons worth retrying, and retries them well,
behind a guard that keeps it out of our own network (the URL is a client's).

ARQ retries a job only when it raises `arq.Retry`; any other exception is final on the
first try. (The reference blog project relied on plain exceptions being retried: they
never were.) So this task decides, per failure, whether another try can help:

- connection errors, timeouts, 5xx and 429: yes, after a backoff delay;
- any other 4xx, or a TLS certificate that fails verification: no, asking again gets the
  same answer;
- a DNS lookup that timed out, or found no lookup thread free: yes;
- an unsafe or malformed URL (the SSRF guard), a malformed redirect or an oversized
  response: no.
"""

import hashlib
import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

import httpx
from arq import Retry

from jobkit import pinned_http, ssrf
from jobkit.ssrf import LookupsBusy, LookupTimedOut, UnsafeURL

from .config import Settings


class FetchFailed(Exception):
    """A final failure: the job ends `failed` with this message, and is not retried."""


# --8<-- [start:fetch]
async def fetch(ctx: dict[str, Any], url: str) -> dict[str, Any]:
    """GET `url`; retry connection errors, timeouts, 5xx and 429 with backoff; not other 4xx."""
    try:
        got = await get_checked(ctx["http"], url, ctx["settings"])
    except (LookupTimedOut, LookupsBusy) as exc:  # slow DNS, or no thread free: try again
        raise retry_later(ctx, str(exc)) from None
    except (pinned_http.BadRedirect, pinned_http.ResponseRefused) as exc:
        raise FetchFailed(str(exc)) from None
    except UnsafeURL as exc:
        raise FetchFailed(f"refused: {exc}") from None
    except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if pinned_http.certificate_refused(exc):  # untrusted, expired, or for another name
            raise FetchFailed(f"{reason} (not retried: the certificate won't change)") from None
        raise retry_later(ctx, reason) from None
    response = got.response
    if response.status_code < 400:
        return {
            "url": got.url,
            "status": response.status_code,
            "bytes": len(got.body),
            "content_type": response.headers.get("content-type"),
            "sha256": hashlib.sha256(got.body).hexdigest(),
        }
    reason = f"HTTP {response.status_code}"
    if response.status_code != 429 and response.status_code < 500:
        raise FetchFailed(f"{reason} from {got.url} (not retried: a 4xx won't change)")
    raise retry_later(ctx, reason, retry_after_seconds(response.headers.get("retry-after")))


def retry_later(ctx: dict[str, Any], reason: str, retry_after: float | None = None) -> Exception:
    """What to raise for a failure worth another try: Retry after a backoff delay, or
    FetchFailed once the tries are used up or the server asks for too long a wait."""
    settings = ctx["settings"]
    attempt = ctx["job_try"]
    if attempt >= settings.fetch_max_tries:
        return FetchFailed(f"{reason}; gave up after {attempt} attempts")
    delay = backoff_delay(attempt, settings.fetch_base_delay_s, settings.fetch_max_delay_s)
    if retry_after is not None:
        if retry_after > settings.fetch_max_retry_after_s:
            return FetchFailed(f"{reason}; server asks to wait {retry_after:.0f} s, too long")
        delay = max(delay, retry_after)  # never sooner than the server asked
    # For the attempt log (worker.this_try): why, and when the next try is due.
    ctx["retry"] = {"error": reason, "next_try_at": datetime.now(UTC) + timedelta(seconds=delay)}
    return Retry(defer=delay)


# --8<-- [end:fetch]


# --8<-- [start:backoff]
def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].

    The jitter matters as much as the exponent: without it, every client that failed
    together retries together, and the struggling server gets the same spike again.
    """
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date; anything else is ignored."""
    value = (value or "").strip()
    # isascii(): str.isdigit() also accepts "²" (which float() refuses) and other scripts.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):
        return None


# --8<-- [end:backoff]


# --8<-- [start:guard]
class Fetched(NamedTuple):
    response: httpx.Response  # read: its status and headers; the body is below
    body: bytes
    url: str  # the last hop's, after redirects


async def get_checked(client: httpx.AsyncClient, url: str, settings: Settings) -> Fetched:
    """GET `url` behind the SSRF guard. The URL is a client's, so fetch must not become a door
    into the network the worker runs in: no loopback, private, link-local or multicast address,
    no cloud metadata service (169.254.169.254 hands out credentials), and none of those hidden
    in an IPv6 form that carries an IPv4 address (IPv4-mapped, 6to4, Teredo, NAT64). Every
    hop, the URL's and each redirect's, takes three steps:

    1. resolve the host once;
    2. refuse the URL if ANY of its addresses is internal (jobkit.ssrf knows the arithmetic);
    3. connect to an address that was checked, never to the name again: a second lookup could
       answer 127.0.0.1 this time (DNS rebinding). The name stays in the Host header and the
       TLS check (jobkit.pinned_http).
    """
    for _ in range(settings.fetch_max_redirects + 1):  # redirects are followed by hand
        addresses = await ssrf.check_url(url, settings.fetch_allowlist_networks)  # 1 and 2
        async with pinned_http.pinned_get(client, url, addresses) as response:  # 3
            if response.is_redirect and "location" in response.headers:
                url = pinned_http.next_hop(url, response.headers["location"])
                continue
            body = await pinned_http.read_capped(response, settings.fetch_max_bytes)
            return Fetched(response, body, url)
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects")


# --8<-- [end:guard]
