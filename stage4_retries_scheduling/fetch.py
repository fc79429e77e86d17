"""`fetch(url)`: an HTTP GET that fails for reasons worth retrying, and retries them well.

ARQ retries a job only when it raises `arq.Retry`; any other exception is final on the
first try. (The reference blog project relied on plain exceptions being retried: they
never were.) So this task decides, per failure, whether another try can help:

- connection errors, timeouts, 5xx and 429: yes, after a backoff delay;
- any other 4xx, or a TLS certificate that fails verification: no, asking again gets the
  same answer;
- a DNS lookup that timed out, or found no lookup thread free: yes;
- an unsafe or malformed URL (SSRF guard), a malformed redirect or an oversized response: no.

Which addresses it may reach, and how it reaches them, is the SSRF guard's: urls.py, pinned.py.
"""

import hashlib
import random
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from arq import Retry

from .lookups import LookupsBusy
from .pinned import FetchFailed, get_checked
from .urls import LookupTimedOut, UnsafeURL


# --8<-- [start:fetch]
async def fetch(ctx: dict[str, Any], url: str) -> dict[str, Any]:
    """GET `url`; retry connection errors, timeouts, 5xx and 429 with backoff; not other 4xx."""
    try:
        got = await get_checked(ctx["http"], url, ctx["settings"])
    except (LookupTimedOut, LookupsBusy) as exc:  # slow DNS, or no thread free: try again
        raise retry_later(ctx, str(exc)) from None
    except UnsafeURL as exc:
        raise FetchFailed(f"refused: {exc}") from None
    except httpx.TransportError as exc:  # connect errors, timeouts, broken connections
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if certificate_refused(exc):  # untrusted, expired, or for another name
            raise FetchFailed(f"{reason} (not retried: the certificate won't change)") from None
        raise retry_later(ctx, reason) from None
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
    raise retry_later(ctx, reason, retry_after_seconds(response.headers.get("retry-after")))


def certificate_refused(exc: BaseException) -> bool:
    """Did TLS refuse the server's certificate? httpx reports it as a ConnectError, like a
    network failure; the ssl module's error is further down the chain of causes."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def retry_later(ctx: dict[str, Any], reason: str, retry_after: float | None = None) -> Exception:
    """What to raise for a failure worth another try: Retry after a backoff delay, or
    FetchFailed once the tries are used up or the server asks for too long a wait."""
    settings, attempt = ctx["settings"], ctx["job_try"]
    if attempt >= settings.fetch_max_tries:
        return FetchFailed(f"{reason}; gave up after {attempt} attempts")
    delay = backoff_delay(attempt, settings.fetch_base_delay_s, settings.fetch_max_delay_s)
    if retry_after is not None:
        if retry_after > settings.fetch_max_retry_after_s:
            return FetchFailed(f"{reason}; server asks to wait {retry_after:.0f} s, too long")
        delay = max(delay, retry_after)  # never sooner than the server asked
    # For the attempt log (attempts.py): why, and when the next try is due.
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
