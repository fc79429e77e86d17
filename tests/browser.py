"""A real headless browser for the tests that need one (the jobs page, the docs site, the
Swagger UI), with no network but loopback.

Debian's `chromium` package comes from `make tools` (which `make test` runs); a test that
needs it when it is missing fails and says so. A test that only needs a page's DOM or a
screenshot runs it from the command line (`dump_dom`, `screenshot`); a test that clicks, as
a person does, drives it with Playwright (the `page` fixture): Playwright launches that same
Chromium (`executable_path`), never a browser build of its own.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests import tools

BROWSER_TIMEOUT_S = 60
# Without the background-networking flags, Chromium tries to reach Google's servers and,
# on a machine with no network, fills its output with refused connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # No network but loopback, as in a workshop room without internet: every request goes
    # to a proxy that is not there (port 9, "discard", refuses), except those Chromium never
    # proxies: localhost and 127.0.0.0/8, where the tests' servers listen. (Host-resolver
    # rules alone would still let a literal IP address through.)
    "--proxy-server=127.0.0.1:9",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    return tools.require("chromium")


# Playwright's own waits: what a person would wait for, generously, on a busy 2-core laptop.
PAGE_TIMEOUT_MS = 20_000


@pytest.fixture
def playwright_browser(chromium: str) -> Iterator[Browser]:
    """The system Chromium driven by Playwright. One per test, not per session: Playwright's
    synchronous API runs an event loop in this thread while it is started, and the tests
    after it run their own (asyncio.run) in the same thread."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=[flag for flag in FLAGS if flag != "--headless"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(playwright_browser: Browser) -> Iterator[Page]:
    context = playwright_browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def _run(chromium: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=BROWSER_TIMEOUT_S,
            check=True,
        )


def dump_dom(chromium: str, url: str, wait_ms: int = 3000, flags: Sequence[str] = ()) -> str:
    """The page's DOM after its scripts have run for `wait_ms` of (virtual) time."""
    return _run(chromium, *flags, f"--virtual-time-budget={wait_ms}", "--dump-dom", url).stdout


def screenshot(chromium: str, url: str, path: Path, wait_ms: int = 3000) -> Path:
    _run(
        chromium,
        f"--virtual-time-budget={wait_ms}",
        "--window-size=1280,900",
        f"--screenshot={path}",
        url,
    )
    return path
