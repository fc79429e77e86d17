"""`fetch(url)`: an HTTP GET that fails for reasons worth retrying, and retries them well.

ARQ retries a job only when it raises `arq.Retry`; any other exception is final on the
first try. (The reference blog project relied on plain exceptions being retried: they
never were.) So this task decides, per failure, whether another try can help:

- connection errors, timeouts, 5xx and 429: yes, after a backoff delay;
- any other 4xx: no, asking again gets the same answer;
- a DNS lookup that timed out: yes;
- an unsafe or malformed URL (SSRF guard), a malformed redirect or an oversized response: no.
"""

import hashlib
import random
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from arq import Retry

from .pinned import pinned_get
from .urls import LookupTimedOut, UnsafeURL, parse_url


class FetchFailed(Exception):
    """A final failure: the job ends `failed` with this message."""


# --8<-- [start:backoff]
def backoff_delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].

    The jitter matters as much as the exponent: without it, every client that failed
    together retries together, and the struggling server gets the same spike again.
    """
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))


# --8<-- [end:backoff]


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


def make_client(settings: Any) -> httpx.AsyncClient:
    """The worker's one HTTP client, shared by every fetch job."""
    return httpx.AsyncClient(
        timeout=settings.fetch_timeout_s,
        follow_redirects=False,  # followed by hand, so each hop is checked: get_checked()
        # No keep-alive: requests go to checked IPs (pinned.py), so one pooled connection
        # would serve every name on that IP, all behind the first name's TLS check.
        limits=httpx.Limits(max_keepalive_connections=0),
        event_hooks={"response": [refuse_bad_redirects]},
    )


async def get_checked(client: httpx.AsyncClient, url: str, settings: Any) -> dict[str, Any]:
    """GET `url` from checked addresses only, following redirects by hand, with a size cap."""
    for _ in range(settings.fetch_max_redirects + 1):
        # Every hop is resolved, checked and connected to by address (pinned.py): a check
        # followed by httpx's own lookup would leave DNS free to change in between.
        async with pinned_get(client, url, settings.fetch_allowlist_networks, IDENTITY) as got:
            if got.is_redirect and "location" in got.headers:
                url = next_hop(url, got.headers["location"])
                continue
            body = await read_capped(got, settings.fetch_max_bytes)
            return {"response": got, "body": body, "url": url}
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects")


# --8<-- [start:fetch]
async def fetch(ctx: dict[str, Any], url: str) -> dict[str, Any]:
    """GET `url`; retry connection errors, timeouts, 5xx and 429 with backoff; not other 4xx."""
    settings, attempt = ctx["settings"], ctx["job_try"]
    retry_after = None
    try:
        got = await get_checked(ctx["http"], url, settings)
    except LookupTimedOut as exc:  # slow DNS: worth another try
        reason = str(exc)
    except UnsafeURL as exc:
        raise FetchFailed(f"refused: {exc}") from None
    except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        response = got["response"]
        if response.status_code < 400:
            return {
                "url": got["url"],
                "status": response.status_code,
                "bytes": len(got["body"]),
                "content_type": response.headers.get("content-type"),
                "sha256": hashlib.sha256(got["body"]).hexdigest(),
            }
        reason = f"HTTP {response.status_code}"
        if response.status_code != 429 and response.status_code < 500:
            raise FetchFailed(f"{reason} from {got['url']} (not retried: a 4xx won't change)")
        retry_after = retry_after_seconds(response.headers.get("retry-after"))

    if attempt >= settings.fetch_max_tries:
        raise FetchFailed(f"{reason}; gave up after {attempt} attempts")
    delay = backoff_delay(attempt, settings.fetch_base_delay_s, settings.fetch_max_delay_s)
    if retry_after is not None:
        if retry_after > settings.fetch_max_retry_after_s:
            raise FetchFailed(f"{reason}; server asks to wait {retry_after:.0f} s, too long")
        delay = max(delay, retry_after)  # never sooner than the server asked
    # For the ledger's attempt record (worker.job_ended): why, and when the next try is due.
    ctx["retry"] = {"error": reason, "next_try_at": datetime.now(UTC) + timedelta(seconds=delay)}
    raise Retry(defer=delay)


# --8<-- [end:fetch]
