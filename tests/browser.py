"""A real headless browser for the tests that need one (the jobs page, the docs site, the
Swagger UI), with no network but loopback.

Debian's `chromium` package comes from `make tools` (which `make test` runs); a test that
needs it when it is missing fails and says so.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

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
