"""The programs some tests drive that pip cannot install (Chromium, wrk).

`make tools` installs them (and `make test` runs it first); a test never does. A test that
needs a missing one fails, naming the command: a skip would hide the coverage it stands for.
"""

from __future__ import annotations

import pytest

from devkit import tools


def require(name: str) -> str:
    """The path of the tool's program; fails the test when it is not installed."""
    if path := tools.find(name):
        return path
    why = f"{name} is not installed ({tools.TOOLS[name].used_by}): {tools.INSTALL_HINT}"
    pytest.fail(why, pytrace=False)
