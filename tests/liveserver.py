"""A stage's app served by uvicorn in a thread of the test's own process: real HTTP, so a
test can hold streams open (TestClient reads a response to its end before it returns), and
still reach into the app (its ledger, its state) to count what it does.

    with serving(app) as url:
        with httpx.Client().stream("GET", f"{url}/jobs/{job_id}/events") as events:
            ...
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from devkit.valkey import free_port
from tests.helpers import poll

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Run `app` (its lifespan too) until the block ends; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)  # in a thread, it leaves the signal handlers alone
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll(lambda: server.started or not thread.is_alive(), START_DEADLINE_S, "uvicorn")
        assert thread.is_alive(), "uvicorn stopped at start-up (see the log above)"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(STOP_DEADLINE_S)
        assert not thread.is_alive(), f"uvicorn did not stop within {STOP_DEADLINE_S:.0f} s"
