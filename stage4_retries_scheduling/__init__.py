"""Stage 4: retries with backoff, scheduled and cron jobs, timeouts, cancel, idempotency."""
