"""Install the programs the tests drive that pip cannot install: Chromium, wrk, redis-server,
PostgreSQL's server and openssl.

    make tools                       # python -m devkit.tools: apt-get install what is missing
    python -m devkit.tools --check   # exit 1, naming what is missing

`make test` runs it first, so CI (a fresh clone on a fresh Debian machine, as root) gets
them; `make check` needs none (its tests start no program). A test never installs anything
itself: one that needs a missing program fails with "run `make tools`" (a skip would hide
the coverage it stands for). Installed programs are left alone, so running it again does
nothing.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

INSTALL_TIMEOUT_S = 900  # Chromium and its libraries are a few hundred MB on a cold machine
INSTALL_HINT = "run `make tools`"


@dataclass(frozen=True)
class Tool:
    package: str  # the Debian package
    commands: tuple[str, ...]  # any one of these on PATH means it is installed
    brew: str  # the macOS equivalent, for the message when apt-get can't be used
    used_by: str
    # Or at one of these paths (globs; the last in sorted order wins): Debian keeps
    # PostgreSQL's server programs in /usr/lib/postgresql/<version>/bin, off the PATH.
    paths: tuple[str, ...] = ()


TOOLS = {
    "chromium": Tool(
        "chromium",
        ("chromium", "chromium-browser"),
        "brew install --cask chromium",
        "the jobs page, the docs site and the offline Swagger UI tests",
    ),
    "wrk": Tool("wrk", ("wrk",), "brew install wrk", "`make bench` and its smoke test"),
    "redis-server": Tool(
        "redis-server",
        ("redis-server",),
        "brew install redis",
        "the check that every stage runs on Redis 7 too (tests/test_redis_versions.py)",
    ),
    "postgresql": Tool(
        "postgresql",
        ("initdb",),
        "brew install postgresql",
        "the ledger tests' PostgreSQL variant (tests/postgres.py starts a server of its own)",
        paths=("/usr/lib/postgresql/*/bin/initdb",),
    ),
    "openssl": Tool(
        "openssl", ("openssl",), "brew install openssl", "the SSRF guard's HTTPS test certificate"
    ),
}


def find(name: str) -> str | None:
    """The path of the tool's program, or None when it is neither on PATH nor where its
    `paths` say."""
    tool = TOOLS[name]
    if found := next(filter(None, map(shutil.which, tool.commands)), None):
        return found
    versions = sorted((p for pattern in tool.paths for p in glob.glob(pattern)), key=_version)
    return versions[-1] if versions else None


def _version(path: str) -> list[int]:
    """/usr/lib/postgresql/15/bin/initdb -> [15], so 15 sorts after 9."""
    return [int(part) for part in path.split("/") if part.isdigit()]


def missing() -> list[str]:
    return [name for name in TOOLS if find(name) is None]


def apt_install(packages: list[str]) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def run(*command: str) -> bool:
        return subprocess.run(command, env=env, timeout=INSTALL_TIMEOUT_S).returncode == 0

    install = ("apt-get", "install", "-y", "-q", *packages)
    # The package lists as they are first: `apt-get update` costs time and is rarely needed.
    return run(*install) or (run("apt-get", "update", "-q") and run(*install))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.tools", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if missing")
    args = parser.parse_args(argv)
    absent = missing()
    if not absent:
        print(f"tools present: {', '.join(f'{n} ({find(n)})' for n in TOOLS)}")
        return 0
    for name in absent:
        print(f"missing: {name}, for {TOOLS[name].used_by}")
    packages = [TOOLS[name].package for name in absent]
    if args.check:
        return 1
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(
            "Install them yourself, then run `make tools` again:\n"
            f"  Debian/Ubuntu: sudo apt-get install {' '.join(packages)}\n"
            f"  macOS:         {'; '.join(TOOLS[name].brew for name in absent)}"
        )
        return 1
    if not apt_install(packages):
        print(f"apt-get could not install {' '.join(packages)}; its output is above")
        return 1
    if still := missing():
        print(f"installed, yet not on PATH: {', '.join(still)}")
        return 1
    print(f"installed: {', '.join(packages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
