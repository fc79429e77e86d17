"""Install a Debian package a test needs (Chromium, wrk) when it is missing.

CI and the developers' machines run as root with apt; elsewhere the caller skips with the
reason we return.
"""

from __future__ import annotations

import os
import shutil
import subprocess

INSTALL_TIMEOUT_S = 600


def ensure(binary: str, package: str) -> tuple[str | None, str]:
    """(path, "") when `binary` is on PATH or could be installed, else (None, why not)."""
    if path := shutil.which(binary):
        return path, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{binary} is not installed and cannot be (needs root and apt-get)"
    install = ["apt-get", "install", "-y", "-q", package]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = None
    for command in (install, ["apt-get", "update", "-q"], install):
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
        )
        if command is install and result.returncode == 0:
            break
    if path := shutil.which(binary):
        return path, ""
    return None, f"apt-get install {package} failed: {result.stderr[-300:] if result else ''}"
