"""`fetch(url)`: an HTTP GET that fails for reasons worth retrying, and retries them well.

ARQ retries a job only when it raises `arq.Retry`; any other exception is final on the
first try. (The reference blog project relied on plain exceptions being retried: they
never were.) So this task decides, per failure, whether another try can help:

- connection errors, timeouts, 5xx and 429: yes, after a backoff delay;
- any other 4xx: no, asking again gets the same answer;
- an unsafe URL (SSRF guard) or an oversized response: no.
"""

import hashlib
import random
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from arq import Retry

from .urls import UnsafeURL, check_url


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
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


async def get_checked(client: httpx.AsyncClient, url: str, settings: Any) -> dict[str, Any]:
    """GET `url`, re-checking the SSRF guard on every redirect hop, with a size cap."""
    allowlist = settings.fetch_allowlist_networks
    for _ in range(settings.fetch_max_redirects + 1):
        # Checked again here, not just in the API: DNS can change between the two. (A real
        # application would also pin the checked address for the connection itself, to close
        # the remaining window; httpx resolves the name once more when it connects.)
        await check_url(url, allowlist)
        async with client.stream("GET", url) as response:
            if response.is_redirect and "location" in response.headers:
                url = str(response.url.join(response.headers["location"]))
                continue
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > settings.fetch_max_bytes:
                    raise FetchFailed(f"response is over {settings.fetch_max_bytes} bytes")
            return {"response": response, "body": bytes(body), "url": url}
    raise FetchFailed(f"more than {settings.fetch_max_redirects} redirects")


# --8<-- [start:fetch]
async def fetch(ctx: dict[str, Any], url: str) -> dict[str, Any]:
    """GET `url`; retry connection errors, timeouts, 5xx and 429 with backoff; not other 4xx."""
    settings, attempt = ctx["settings"], ctx["job_try"]
    retry_after = None
    try:
        got = await get_checked(ctx["http"], url, settings)
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
